"""Sharded loading (FSDP2): a checkpoint read lazily equals transformers' load; 2 gloo ranks fill a meta-device model
from rank 0 so that rank 1 never holds the whole model, and the filled model equals the normal load; FSDP
pretraining starts from rank 0's init and follows the 1-process curve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slim.harness.calibration.fingerprint import model_fingerprint
from slim.harness.compression.plan import ExpertGroup, ExpertPlan
from slim.harness.compression.surgery import reduce_experts
from slim.harness.config.load import load_config
from slim.harness.models.build import build_model
from slim.harness.models.checkpoint_state import read_state_dict
from slim.harness.models.io import empty_model, load_pretrained, save_pretrained
from slim.harness.models.mtp import build_mtp
from slim.harness.models.mtp_io import save_mtp
from slim.methods.zeda.modeling_zeda import install_zero_experts
from tests.conftest import TINY_OVERRIDES
from tests.fixtures.distributed_runs import FSDP, LOSS_TOL, step_losses

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# ~320 MiB of fp32 backbone weights in 190 tensors (the largest 16 MiB) plus a 26 MiB MTP module: big enough
# that a full copy stands out above a process's ~0.5 GiB of imports.
BIG_MODEL = ["model.vocab_size=8192", "data.vocab_size=8192", "model.hidden_size=256", "model.num_hidden_layers=12",
             "model.num_experts=64", "model.moe_intermediate_size=128", "model.shared_expert_intermediate_size=256"]


def _with_per_layer_experts(model: torch.nn.Module) -> torch.nn.Module:
    reduce_experts(model, {0: ExpertPlan([ExpertGroup.single(e) for e in (1, 4, 6, 9, 12)], 16)})
    return model


def _with_zero_experts(model: torch.nn.Module) -> torch.nn.Module:
    install_zero_experts(model, 2)
    return model


@pytest.mark.parametrize("structure", [lambda model: model, _with_per_layer_experts, _with_zero_experts],
                         ids=["plain", "per_layer_experts", "zero_experts"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lazy_read_equals_the_transformers_load(tmp_path, structure, dtype):
    """read_state_dict on a meta-device model gives load_pretrained's state dict bit for bit (packed experts,
    per-layer expert counts, zero-expert routers), and the same teacher fingerprint."""
    model = structure(build_model(load_config(TINY_OVERRIDES).model, dtype=dtype))
    directory = save_pretrained(model, tmp_path / "model")
    loaded, _ = load_pretrained(directory)
    skeleton = empty_model(directory)
    assert type(skeleton).__name__ == type(loaded).__name__
    assert all(param.is_meta and param.dtype == dtype for param in skeleton.parameters())
    state, reference = read_state_dict(skeleton, directory), loaded.state_dict()
    assert state.keys() == reference.keys()
    assert all(state[name].dtype == tensor.dtype and torch.equal(state[name], tensor)
               for name, tensor in reference.items())
    assert model_fingerprint(skeleton, state) == model_fingerprint(loaded)


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], int]:
    """(each rank's report from tests/sharded_load_worker.py, the checkpoint's weight bytes) for the big model."""
    root = tmp_path_factory.mktemp("sharded")
    model = build_model(load_config([*TINY_OVERRIDES, *BIG_MODEL]).model)
    mtp = build_mtp(model)
    full_bytes = sum(tensor.numel() * tensor.element_size()
                     for module in (model, mtp) for tensor in module.state_dict().values())
    model_dir = save_pretrained(model, root / "model", extras=lambda directory, mtp=mtp: save_mtp(mtp, directory))
    del model, mtp
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    workers = [subprocess.Popen([sys.executable, str(REPO / "tests/sharded_load_worker.py"), str(model_dir), str(root)],
                                env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for rank in range(2)]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    return [json.loads((root / f"rank{rank}.json").read_text()) for rank in range(2)], full_bytes


@pytest.mark.slow
def test_only_rank0_ever_holds_the_whole_model(sharded_run):
    """Rank 1's peak RSS while loading grows by well under the model's bytes (its half of the shards plus one
    tensor in flight); rank 0's, which reads the whole checkpoint, by at least the model's bytes."""
    reports, full_bytes = sharded_run
    full_mib = full_bytes / 2**20
    growth = [report["peak_mib"] - report["rss_before_mib"] for report in reports]
    print(f"model {full_mib:.0f} MiB; peak RSS growth while loading: rank 0 {growth[0]:.0f} MiB, "
          f"rank 1 {growth[1]:.0f} MiB")
    assert growth[1] < 0.75 * full_mib
    assert growth[0] >= full_mib


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sharded_model_equals_the_normal_load(sharded_run, precision):
    """Gathered weights and MTP weights equal load_pretrained + load_mtp bit for bit (cast to bf16 for a bf16
    teacher), the recomputed rotary buffers equal, and the logits are the normal load's."""
    report = sharded_run[0][0][precision]
    print(f"{precision}: max |logits sharded - logits normal load| = {report['max_logits_diff']:.2e}")
    assert report["keys_match"] and report["unequal_weights"] == [] and report["unequal_buffers"] == []
    assert report["max_logits_diff"] == 0.0


def slim_pretrain(run_dir: Path, tokenizer_dir: Path, *overrides: str) -> dict[int, float]:
    """Run a 3-step `slim pretrain` of a tiny model in a subprocess; step -> global-batch loss."""
    args = [*TINY_OVERRIDES, "data.seq_len=32", f"data.tokenizer={tokenizer_dir}", f"run_dir={run_dir}",
            "train.max_steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.val_every=3",
            "train.val_batches=1", "train.log_every=1", "train.accelerator=cpu", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "slim.harness.cli.main", "pretrain", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return step_losses(run_dir)


@pytest.mark.slow
def test_fsdp_pretraining_follows_the_one_process_curve(tmp_path, tokenizer_dir):
    """2 FSDP processes build the model on the meta device and receive rank 0's init (the 1-process init: same
    seed), so the global-batch loss follows the 1-process run; router logits reach the balance loss under FSDP."""
    one = slim_pretrain(tmp_path / "one", tokenizer_dir)
    two = slim_pretrain(tmp_path / "two", tokenizer_dir, *FSDP)
    assert sorted(one) == sorted(two) == [0, 1, 2]
    print("per-step |pretrain loss 1 process - 2 FSDP processes|:", {step: abs(one[step] - two[step]) for step in one})
    assert all(abs(one[step] - two[step]) < LOSS_TOL for step in one)
