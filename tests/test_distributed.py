"""slim.harness.distributed in one process: the launch is read from torchrun's and srun's variables, shards cover the
calibration batches once, the helpers are no-ops without a launch, and a launch that does not match
train.devices x train.num_nodes is refused before any work."""

from __future__ import annotations

import pytest
import torch

from slim.harness import distributed
from slim.harness.calibration import reduce
from slim.harness.config.schema import CalibrationConfig
from slim.harness.errors import UserError
from slim.harness.evaluation.evaluate import resolve_device
from slim.harness.pipeline import run_recipe
from tests.fixtures.distributed_runs import LAUNCH_VARIABLES

TORCHRUN = {"TORCHELASTIC_RUN_ID": "x", "GROUP_RANK": 0, "LOCAL_WORLD_SIZE": 2}


@pytest.fixture
def launch(monkeypatch: pytest.MonkeyPatch):
    """launch(**variables): exactly these launcher variables are set (every other one cleared) for the test."""

    def set_variables(**variables: int | str) -> None:
        for name in LAUNCH_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, str(value))

    set_variables()
    return set_variables


def test_torchrun_and_srun_launches_are_read(launch):
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK and srun's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID give the
    rank, world size and device index; without either this is one process of rank 0. A Slurm job without
    --ntasks-per-node (which Lightning needs) is one line."""
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    launch(**TORCHRUN, RANK=3, WORLD_SIZE=4, LOCAL_RANK=1)
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (3, 4, 1)
    launch(SLURM_NTASKS=8, SLURM_NTASKS_PER_NODE=4, SLURM_PROCID=5, SLURM_LOCALID=1, SLURM_NODEID=1,
           SLURM_JOB_NAME="slim")
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (5, 8, 1)
    launch(SLURM_NTASKS=8, SLURM_PROCID=5, SLURM_JOB_NAME="slim")
    with pytest.raises(UserError, match="srun: You set `--ntasks=8`.*Use `--ntasks-per-node=8` instead"):
        distributed.rank()


def test_one_process_helpers_do_nothing(launch):
    """Without a launch: no group is made, the barrier returns, the sum is the tensor, rank 0's work just runs."""
    distributed.init_distributed(cuda=False)
    assert not torch.distributed.is_initialized()
    distributed.barrier()
    tensor = torch.arange(3.0)
    assert distributed.all_reduce_sum(tensor) is tensor
    assert distributed.on_rank_zero(lambda: {"report": 1}) == {"report": 1}


def test_shards_cover_every_item_once():
    """Shards in rank order concatenate to range(count); their sizes differ by at most one."""
    for count in range(9):
        for shards in range(1, 5):
            parts = [distributed.shard(count, index, shards) for index in range(shards)]
            assert [item for part in parts for item in part] == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rank_shares_split_batches_and_probe_tokens(monkeypatch: pytest.MonkeyPatch):
    """Each rank's share keeps whole one-process batches, and the probe budgets left to the shares add up to the
    one-process probe set (the first probe_tokens tokens of the batch stream)."""
    batches = [torch.zeros(size, 32, dtype=torch.long) for size in (4, 4, 2)]
    cfg = CalibrationConfig(probe_tokens=200)
    monkeypatch.setattr(reduce, "world_size", lambda: 2)
    shares = []
    for rank in range(2):
        monkeypatch.setattr(reduce, "rank", lambda rank=rank: rank)
        shares.append(reduce.rank_share(batches, cfg))
    assert [share[0] for share in shares] == [batches[:1], batches[1:]]
    seen = [min(share_cfg.probe_tokens, sum(batch.numel() for batch in share)) for share, share_cfg in shares]
    assert seen == [128, 72]


def test_launch_unlike_train_devices_is_refused(launch, tiny_config, tmp_path):
    """A 2-process torchrun of a 1-device run, or one process for train.devices=2, fails in one line naming the
    fields before anything is written."""
    launch(**TORCHRUN, RANK=0, WORLD_SIZE=2, LOCAL_RANK=0)
    with pytest.raises(UserError, match=r"train.devices x train.num_nodes: 1 x 1 = 1 processes, but this run was "
                                        r"launched as 2; start one process per device \(torchrun --nproc_per_node 1"):
        distributed.check_launch(1, 1)
    distributed.check_launch(2, 1)
    launch()
    cfg = tiny_config("train.strategy=fsdp", "train.devices=2", "train.warmup_steps=1",
                      f"compress.output={tmp_path / 'student'}")
    with pytest.raises(UserError, match="train.devices x train.num_nodes: 2 x 1 = 2 processes, but this run was "
                                        "launched as 1"):
        run_recipe(cfg)
    assert not (tmp_path / "student").exists() and not (tmp_path / "run").exists()


def test_auto_eval_device_is_the_rank_own_gpu(launch, monkeypatch: pytest.MonkeyPatch):
    """eval.device=auto is cuda:LOCAL_RANK on a GPU node, so ranks never pile onto cuda:0; the CPU without CUDA."""
    launch(SLURM_NTASKS=4, SLURM_NTASKS_PER_NODE=2, SLURM_PROCID=3, SLURM_LOCALID=1, SLURM_NODEID=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
