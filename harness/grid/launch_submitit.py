"""Scale-out: every grid cell as a Slurm job through submitit, cells sharing resources in one job array.

The job function is `execute_cell`, so a job writes its row into the same results store as the in-process
runner. Nodes and GPUs per node are read from each cell's config (`train.num_nodes`, `train.devices`), with
one task per GPU, which is the layout Lightning's SLURM environment expects for multi-node training. A cell's job is
checkpointable: preempted or at its time limit, submitit requeues it and the cell resumes its run_dir's last.ckpt
(train.resume; `train.checkpoint_every_minutes` bounds the steps a requeue repeats).
`cluster="local"` runs the same path as subprocesses on this machine (what the tests use).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import submitit
from tqdm import tqdm

from slim.harness.grid.expand import Cell
from slim.harness.grid.kinds import CellKind, cell_kinds
from slim.harness.grid.runner import execute_cell
from slim.harness.grid.spec import SlurmParams
from slim.harness.grid.store import ResultsStore


def cell_resources(cell: Cell) -> tuple[int, int]:
    """(nodes, GPUs per node) of a cell; CPU cells ask for no GPU."""
    train = cell.config.train
    gpus = 0 if train.accelerator == "cpu" else train.devices
    return train.num_nodes, gpus


def executor_parameters(resources: tuple[int, int], slurm: SlurmParams, name: str) -> dict:
    """AutoExecutor parameters for one job array."""
    nodes, gpus = resources
    params = {"name": name, "nodes": nodes, "gpus_per_node": gpus, "tasks_per_node": max(gpus, 1),
              "cpus_per_task": slurm.cpus_per_task, "timeout_min": slurm.timeout_min,
              "slurm_array_parallelism": slurm.array_parallelism}
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    optional = {"slurm_account": slurm.account, "slurm_qos": slurm.qos, "slurm_constraint": slurm.constraint,
                "slurm_setup": list(slurm.setup)}
    params.update((key, value) for key, value in optional.items() if value)
    params["slurm_signal_delay_s"] = slurm.signal_delay_s
    return params


class CellJob(submitit.helpers.Checkpointable):
    """`execute_cell` as a job submitit may requeue: on preemption or timeout its `checkpoint` (inherited) resubmits
    the same call, which reruns the cell in its run_dir, resuming from last.ckpt."""

    def __call__(self, store_path: str, cell: Cell, kind: CellKind) -> str:
        return execute_cell(store_path, cell, kind)


def run_submitit(store_path: str, cells: list[Cell], slurm: SlurmParams, folder: str | Path,
                 cluster: str | None = None) -> None:
    """Submit one job array per resource shape and wait for every job (across its requeues); a job that dies
    before recording its cell (node failure, no requeue left) marks the cell failed with submitit's error."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    jobs = []
    ordered = sorted(cells, key=cell_resources)
    for resources, group in itertools.groupby(ordered, key=cell_resources):
        group = list(group)
        executor.update_parameters(**executor_parameters(resources, slurm, f"grid-{group[0].spec}"))
        kinds = [cell_kinds.get(cell.kind) for cell in group]
        jobs += zip(group, executor.map_array(CellJob(), [store_path] * len(group), group, kinds))
    for cell, job in tqdm(jobs, desc="grid cells (submitit)", unit="cell"):
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - one lost job must not stop collecting the others
            with ResultsStore(store_path) as store:
                if store.statuses().get(cell.key) != "done":
                    message = f"submitit job {job.job_id}: {type(err).__name__}"
                    store.mark_failed(cell.key, message, str(err))
