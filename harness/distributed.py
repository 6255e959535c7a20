"""Where this process sits in a multi-process launch, and the few collectives the pipeline needs around Lightning.

torchrun (RANK, WORLD_SIZE, LOCAL_RANK) and srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) are read through
Lightning's own cluster environments, in Lightning's order (torchelastic first: it also runs inside Slurm), so the
harness and the Trainer always agree on ranks. `init_distributed` joins the launch's process group before any stage
runs; Lightning's strategies then reuse it (`lightning.fabric.utilities.distributed._init_dist_connection` returns
early when the default group exists). In one process every helper here is a no-op.

Ranks waiting for rank 0 (compress, scratch re-init, eval) wait on a separate gloo group with a long timeout: the
wait is host-side, so NCCL's watchdog never sees it, and CPU tensors reduce there whatever the training backend is.
A rank that dies hard leaves the others waiting until the launcher ends the job (torchrun does at once; give srun
`--kill-on-bad-exit=1`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment

from slim.harness.errors import UserError

WAIT_TIMEOUT = timedelta(hours=24)  # longest a rank waits for rank 0 (compressing or evaluating a large model)
_wait_group: dist.ProcessGroup | None = None
T = TypeVar("T")


def launch_environment() -> ClusterEnvironment | None:
    """torchrun's or srun's environment when they started more than one process, else None."""
    for environment_type in (TorchElasticEnvironment, SLURMEnvironment):
        if environment_type.detect():
            try:
                environment = environment_type()
            except RuntimeError as error:  # Lightning's Slurm environment wants --ntasks-per-node, not --ntasks
                raise UserError(f"srun: {error}") from None
            return environment if environment.world_size() > 1 else None
    return None


def world_size() -> int:
    """Processes in the run: the live process group's, else the launch's (1 without a launcher)."""
    if dist.is_initialized():
        return dist.get_world_size()
    environment = launch_environment()
    return environment.world_size() if environment else 1


def rank() -> int:
    """This process's global rank (0 in one process)."""
    if dist.is_initialized():
        return dist.get_rank()
    environment = launch_environment()
    return environment.global_rank() if environment else 0


def local_rank() -> int:
    """This process's rank on its node, i.e. its device index (0 in one process)."""
    environment = launch_environment()
    return environment.local_rank() if environment else 0


def check_launch(devices: int, num_nodes: int) -> None:
    """Refuse a run whose train.devices x train.num_nodes differs from the processes it was launched as: every
    process trains on one device, and the stages before training must already run on all of them."""
    processes, launched = devices * num_nodes, world_size()
    if processes != launched:
        raise UserError(f"train.devices x train.num_nodes: {devices} x {num_nodes} = {processes} processes, but "
                        f"this run was launched as {launched}; start one process per device (torchrun "
                        f"--nproc_per_node {devices}, or srun --ntasks-per-node {devices}) or set them to match")


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's `train.accelerator` trains on CUDA here ("auto" does when a GPU is visible)."""
    return accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())


def init_distributed(cuda: bool) -> None:
    """Join the launch's process group (NCCL on this rank's GPU when `cuda`, else gloo) and the wait group;
    nothing without a launcher or when a group exists already."""
    global _wait_group
    environment = launch_environment()
    if environment is None or dist.is_initialized():
        return
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = environment.main_address, str(environment.main_port)
    device = torch.device("cuda", environment.local_rank()) if cuda else None
    if device is not None:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=environment.global_rank(),
                            world_size=environment.world_size(), device_id=device)
    atexit.register(_leave)
    _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _group() -> dist.ProcessGroup | None:
    """The wait group, or None in one process. A group Lightning made gets its wait group on first use (every
    rank reaches the same collectives in the same order, so they create it together)."""
    global _wait_group
    if world_size() == 1:
        return None
    assert dist.is_initialized(), "init_distributed() must run before the first collective"
    if _wait_group is None:
        _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return _wait_group


def barrier() -> None:
    """Every rank waits here for the others."""
    group = _group()
    if group is not None:
        dist.barrier(group=group)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over ranks (reduced on the CPU, returned on `tensor`'s device); in one process, `tensor`."""
    group = _group()
    if group is None:
        return tensor
    total = tensor.detach().to("cpu", copy=True)
    dist.all_reduce(total, group=group)
    return total.to(tensor.device)


def on_rank_zero(work: Callable[[], T]) -> T:
    """`work()` on rank 0 alone, once every rank has got here (so none still reads what it writes); every rank
    returns its result. When it raises, rank 0 re-raises and the others raise its first line (a UserError stays
    one)."""
    group = _group()
    if group is None:
        return work()
    dist.barrier(group=group)
    outcome: list[object] = [None]
    if rank() == 0:
        try:
            outcome[0] = (True, work())
        except Exception as err:
            line = f"{err}".splitlines()[0] if f"{err}" else type(err).__name__
            dist.broadcast_object_list([(False, (isinstance(err, UserError), line))], src=0, group=group)
            raise
    dist.broadcast_object_list(outcome, src=0, group=group)
    succeeded, value = outcome[0]
    if not succeeded:
        user_error, line = value
        raise UserError(line) if user_error else RuntimeError(f"rank 0 failed: {line}")
    return value


def shard(count: int, shard_rank: int, shards: int) -> range:
    """Shard `shard_rank`'s contiguous part of range(count): shards in rank order cover it once, sizes differ by
    at most one."""
    return range(count * shard_rank // shards, count * (shard_rank + 1) // shards)
