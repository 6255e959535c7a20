"""Run grid cells and record each one in the results store.

`execute_cell` is the one job function: the in-process loop, the parallel worker processes and the
submitit jobs all call it, so every launcher writes the same rows (and cells share calibration passes the same
way: slim.harness.grid.calibration). A cell that raises is recorded as
failed (error + traceback) and the grid goes on; a process killed mid-cell leaves its row `running`,
and the next run of the grid runs it again. Finished (`done`) cells are never rerun. Worker processes die
with the grid process (Linux `PR_SET_PDEATHSIG`), so a killed grid leaves no cell running behind it, and write
their output to their cell's `cell.log`, so the terminal shows the grid's one progress bar, not interleaved ones.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import socket
import subprocess
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from tqdm import tqdm

from slim.harness.config.schema import SlimConfig
from slim.harness.distributed import rank
from slim.harness.grid.calibration import with_shared_stats
from slim.harness.grid.expand import Cell
from slim.harness.grid.kinds import CellKind, cell_kinds
from slim.harness.grid.store import ResultsStore
from slim.harness.orphans import die_with_parent
from slim.harness.plugins import load_plugins
from slim.harness.provenance import software
from slim.harness.verbosity import configure_output, redirect_output

CELL_LOG = "cell.log"  # a parallel worker's stdout and stderr, in its cell's run_dir
REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def code_version() -> str:
    """`git describe --always --dirty` of the harness checkout, recorded with every row."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def _worker() -> str:
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    return f"{socket.gethostname()}:{os.getpid()}" + (f":job{job}" if job else "")


def _cell_config(store_path: str, cell: Cell, kind: CellKind) -> SlimConfig:
    """The config the cell runs: with the grid's shared calibration stats when its kind calibrates."""
    return with_shared_stats(cell.config, Path(store_path).parent) if kind.calibrates else cell.config


def execute_cell(store_path: str, cell: Cell, kind: CellKind) -> str:
    """Run one cell and record it; returns its final status. `kind` travels with the call so jobs in other
    processes need no registry lookup (a kind registered outside harness/grid/cells works too)."""
    configure_output()  # a worker or submitit job keeps the grid command's --verbose choice
    load_plugins()  # the installed plug-ins, as in the grid command's process
    if rank() != 0:  # a cell of a multi-task job: every task runs it, rank 0 alone records it
        kind.execute(_cell_config(store_path, cell, kind))
        return "done"
    with ResultsStore(store_path) as store:
        store.mark_running(cell.key, _worker(), code_version())
        try:
            output = kind.execute(_cell_config(store_path, cell, kind))
            metrics = {name: float(value) for name, value in output.metrics.items()}
        except Exception as err:  # noqa: BLE001 - a failed cell must not stop the grid
            store.mark_failed(cell.key, f"{type(err).__name__}: {err}".splitlines()[0],
                              "".join(traceback.format_exception(err)))
            return "failed"
        store.mark_done(cell.key, metrics, output.artifacts, software())
        return "done"


def run_sequential(store_path: str, cells: list[Cell]) -> None:
    """Cells one after another in this process."""
    for cell in tqdm(cells, desc="grid cells", unit="cell"):
        execute_cell(store_path, cell, cell_kinds.get(cell.kind))


def cell_log(cell: Cell) -> Path:
    return Path(cell.config.run_dir) / CELL_LOG


def _worker_main(parent_pid: int, store_path: str, cell: Cell, kind: CellKind) -> None:
    """A worker process: tied to the grid process's life, its output in the cell's log, then one cell."""
    die_with_parent(parent_pid)
    redirect_output(cell_log(cell))
    execute_cell(store_path, cell, kind)


@dataclass
class _Running:
    cell: Cell
    process: multiprocessing.process.BaseProcess


def _record_crash(store_path: str, job: _Running) -> None:
    """A worker that died without recording its cell (killed, out of memory) fails that cell."""
    with ResultsStore(store_path) as store:
        if store.statuses().get(job.cell.key) == "running":
            message = f"worker process exited with code {job.process.exitcode}"
            store.mark_failed(job.cell.key, message, message)


def run_parallel(store_path: str, cells: list[Cell], workers: int) -> None:
    """Up to `workers` cells at once, each in a fresh spawned process (no state or memory shared between
    cells, and a crashing cell takes down only its own process)."""
    context = multiprocessing.get_context("spawn")
    pending, running = list(reversed(cells)), []
    with tqdm(total=len(cells), desc="grid cells", unit="cell") as progress:
        while pending or running:
            while pending and len(running) < workers:
                cell = pending.pop()
                process = context.Process(target=_worker_main, name=f"cell-{cell.key}",
                                          args=(os.getpid(), store_path, cell, cell_kinds.get(cell.kind)))
                process.start()
                running.append(_Running(cell, process))
            wait([job.process.sentinel for job in running])
            for job in [job for job in running if not job.process.is_alive()]:
                job.process.join()
                if job.process.exitcode != 0:
                    _record_crash(store_path, job)
                running.remove(job)
                progress.update()
