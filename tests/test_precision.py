"""train.precision=bf16-mixed: fp32 master weights and a bf16 teacher, one bf16 compute path per strategy, and a
distillation loss close to fp32's (the loss curves against 32-true, 1 and 2 FSDP processes: tests/test_fsdp.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from slim.harness.config.load import load_config
from slim.harness.config.schema import SlimConfig, TrainConfig
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.mtp import build_mtp
from slim.harness.models.mtp_io import save_mtp
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.trainer import build_trainer
from tests.conftest import TINY_OVERRIDES

TINY_MODEL = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.full_attention_interval=2",
              "model.num_experts=8", "model.num_experts_per_tok=2", "model.moe_intermediate_size=32",
              "model.shared_expert_intermediate_size=64"]
# |bf16-mixed - 32-true| / 32-true of one batch's total loss (lm, kd, mtp terms, balance): measured 3.8e-5.
STEP_RELATIVE_GAP = 5e-3


def _save(cfg: SlimConfig, directory: Path, seed: int, dtype: torch.dtype) -> Path:
    model = build_model(cfg.model, seed=seed, dtype=dtype)
    return save_pretrained(model, directory, extras=lambda out: save_mtp(build_mtp(model), out))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[SlimConfig, Path, Path]:
    """(config, teacher, student): random-init tiny fp32 models with MTP modules."""
    root = tmp_path_factory.mktemp("precision")
    cfg = load_config([*TINY_OVERRIDES, *TINY_MODEL])
    return cfg, _save(cfg, root / "teacher", 0, torch.float32), _save(cfg, root / "student", 1, torch.float32)


def _module(pair: tuple[SlimConfig, Path, Path], precision: str, student: Path | None = None) -> DistillModule:
    cfg, teacher_dir, student_dir = pair
    distill = replace(cfg.distill, teacher=str(teacher_dir), student=str(student or student_dir), loss="full")
    module = DistillModule(distill, replace(cfg.train, precision=precision))
    module.configure_model()
    return module


def test_bf16_mixed_keeps_fp32_master_weights_and_a_bf16_teacher(pair, tmp_path):
    """The student and its MTP module train in fp32 even from a bf16 checkpoint; the teacher's parameters are
    the fp32 file cast to bf16 once, while its rotary inv_freq stays the fp32 table."""
    module = _module(pair, "bf16-mixed", student=_save(pair[0], tmp_path / "bf16_student", 1, torch.bfloat16))
    student_params = [*module.student.parameters(), *module.student_mtp.parameters()]
    assert {param.dtype for param in student_params} == {torch.float32}
    reference, _ = load_pretrained(pair[1])
    teacher = module.teacher.model
    assert all(param.dtype == torch.bfloat16 for param in [*teacher.parameters(), *module.teacher.mtp.parameters()])
    assert all(torch.equal(param, reference.get_parameter(name).to(torch.bfloat16))
               for name, param in teacher.named_parameters())
    inv_freq = teacher.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32 and torch.equal(inv_freq, reference.model.rotary_emb.inv_freq)


def test_bf16_mixed_batch_loss_is_close_to_fp32(pair):
    """Under Lightning's bf16 autocast (the 1-process path) the fp32 student, bf16 teacher and KD kernels give a
    batch loss within STEP_RELATIVE_GAP of 32-true's, and not 32-true's loss itself."""
    input_ids = torch.randint(0, pair[0].model.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": input_ids[:, :-1], "labels": input_ids[:, 1:]}
    with torch.no_grad():
        fp32 = _module(pair, "32-true").step_loss(batch).total.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = _module(pair, "bf16-mixed").step_loss(batch).total.item()
    gap = abs(bf16 - fp32) / abs(fp32)
    print(f"batch loss 32-true {fp32:.6f}, bf16-mixed {bf16:.6f}: relative gap {gap:.1e}")
    assert 0 < gap < STEP_RELATIVE_GAP


@pytest.mark.parametrize(("strategy", "devices", "plugin"), [("fsdp", 2, Precision), ("auto", 1, MixedPrecision)])
def test_only_one_bf16_compute_path_per_strategy(tmp_path, strategy, devices, plugin):
    """Under FSDP Lightning runs at 32-true (FSDP2's MixedPrecisionPolicy computes in bf16, no autocast on top);
    without FSDP it is Lightning's bf16 autocast."""
    cfg = TrainConfig(strategy=strategy, devices=devices, accelerator="cpu", precision="bf16-mixed", warmup_steps=1)
    assert type(build_trainer(cfg, tmp_path).precision_plugin) is plugin
