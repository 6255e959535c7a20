"""One experts implementation policy (harness/models/experts_policy.py): resolution, reach, identity, records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from slim.harness.cli.main import main
from slim.harness.config.load import load_config
from slim.harness.config.schema import ModelConfig
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.experts_policy import (
    apply_experts_policy,
    experts_modules,
    grouped_mm_runs,
    implementations_in,
    resolve_experts_implementation,
)
from slim.harness.models.mtp import build_mtp, run_mtp
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.run import ExpertsPolicy

CPU = torch.device("cpu")
needs_grouped_mm = pytest.mark.skipif(not grouped_mm_runs(CPU, torch.float32),
                                      reason="this torch has no CPU grouped GEMM (torch >= 2.9)")


def tiny(family: str) -> ModelConfig:
    """Hidden 32, 2 layers (qwen3_next: one Gated DeltaNet, one full attention), 8 experts top-2, one MTP depth."""
    cfg = ModelConfig(family=family, vocab_size=128, hidden_size=32, num_hidden_layers=2, full_attention_interval=2,
                      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                      shared_expert_intermediate_size=32, mtp_num_layers=1)
    if family == "qwen3_next":
        return cfg
    cfg = dataclasses.replace(cfg, shared_expert_intermediate_size=0, partial_rotary_factor=1.0)
    return dataclasses.replace(cfg, head_dim=8) if family == "olmoe" else cfg  # olmoe: head_dim = hidden / heads


@needs_grouped_mm
def test_auto_is_grouped_mm_on_cpu() -> None:
    """"auto" picks grouped_mm on a CPU whose torch runs the grouped GEMM, for every dtype it supports."""
    assert resolve_experts_implementation("auto", "cpu", [torch.float32, torch.bfloat16]) == "grouped_mm"


@needs_grouped_mm
def test_auto_is_eager_for_a_dtype_without_the_kernel() -> None:
    """The CPU grouped GEMM takes float32 / bfloat16 / float16 only, so float64 experts resolve to eager."""
    assert resolve_experts_implementation("auto", "cpu", [torch.float32, torch.float64]) == "eager"


def test_explicit_value_is_returned_as_is() -> None:
    """An explicit implementation is never second-guessed by the device or dtype."""
    assert resolve_experts_implementation("eager", "cpu", [torch.float32]) == "eager"
    assert resolve_experts_implementation("batched_mm", "cpu", [torch.float64]) == "batched_mm"


def test_bad_value_is_refused_at_load_in_one_line() -> None:
    """A value transformers does not register fails at config load naming the field and every allowed value."""
    with pytest.raises(UserError) as error:
        load_config(["model_runtime.experts_implementation=fast"])
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("model_runtime.experts_implementation: unknown 'fast'; valid: auto, eager")
    assert "grouped_mm" in message and "batched_mm" in message


def test_config_default_is_auto_and_explicit_values_load() -> None:
    """Every command's config carries the policy; "auto" by default, any registered name accepted."""
    assert load_config().model_runtime.experts_implementation == "auto"
    cfg = load_config(["model_runtime.experts_implementation=batched_mm"])
    assert cfg.model_runtime.experts_implementation == "batched_mm"


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_moe", "olmoe", "mixtral"])
def test_model_and_mtp_run_the_applied_implementation(family: str) -> None:
    """The MTP blocks hold their own copy of the model config, and still get the same implementation."""
    model = build_model(tiny(family))
    mtp = build_mtp(model)
    assert experts_modules(model) and experts_modules(mtp)
    assert all(module.config is not model.config for module in experts_modules(mtp))
    for requested in ("eager", "batched_mm"):
        assert apply_experts_policy(requested, model, mtp) == requested
        assert implementations_in(model) == implementations_in(mtp) == {requested}


@needs_grouped_mm
@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_moe", "olmoe", "mixtral"])
def test_grouped_mm_logits_and_gradients_equal_eager(family: str) -> None:
    """Identity check: backbone and MTP logits, and the expert weight gradients, under grouped_mm equal eager's."""
    model = build_model(tiny(family))
    mtp = build_mtp(model)
    ids = torch.randint(0, 128, (2, 13), generator=torch.Generator().manual_seed(0))

    def run(implementation: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        apply_experts_policy(implementation, model, mtp)
        model.zero_grad()
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        mtp_logits = run_mtp(model, mtp, out.hidden_states[-1], ids)[0]
        (out.logits.square().mean() + mtp_logits.square().mean()).backward()
        grads = [weight.grad.clone() for module in experts_modules(model) for weight in module.parameters()]
        return out.logits.detach(), mtp_logits.detach(), grads

    eager, grouped = run("eager"), run("grouped_mm")
    torch.testing.assert_close(grouped[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grouped[1], eager[1], rtol=1e-5, atol=1e-6)
    for grouped_grad, eager_grad in zip(grouped[2], eager[2], strict=True):
        torch.testing.assert_close(grouped_grad, eager_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("requested", ["auto", "eager"])
def test_distillation_applies_it_to_student_mtp_and_teacher(teacher, tiny_config, requested: str):
    """The training callback reaches the student, its MTP module and the frozen teacher (and its MTP module),
    which sits outside the Lightning module tree."""
    if requested == "auto" and not grouped_mm_runs(CPU, torch.float32):
        pytest.skip("this torch has no CPU grouped GEMM")
    teacher_dir, _, _ = teacher
    cfg = tiny_config(f"distill.teacher={teacher_dir}", f"distill.student={teacher_dir}",
                      f"model_runtime.experts_implementation={requested}")
    module = DistillModule(cfg.distill, cfg.train)
    module.configure_model()
    callback = ExpertsPolicy(cfg.model_runtime.experts_implementation,
                             frozen=lambda trained: (trained.teacher.model, trained.teacher.mtp))
    callback.on_fit_start(None, module)  # type: ignore[arg-type]
    expected = "grouped_mm" if requested == "auto" else requested
    assert callback.implementation == expected
    assert module.student_mtp is not None and module.teacher.mtp is not None
    for part in (module.student, module.student_mtp, module.teacher.model, module.teacher.mtp):
        assert implementations_in(part) == {expected}


@pytest.mark.parametrize("requested", ["auto", "eager"])
def test_eval_summary_records_it(teacher, tmp_path: Path, requested: str):
    """`slim eval` applies the policy and writes what ran to eval_summary.json."""
    if requested == "auto" and not grouped_mm_runs(CPU, torch.float32):
        pytest.skip("this torch has no CPU grouped GEMM")
    teacher_dir, _, base = teacher
    code = main(["eval", *base, f"run_dir={tmp_path}", f"eval.model={teacher_dir}", "eval.tasks=[]",
                 "eval.device=cpu", "eval.perplexity_batches=1", "eval.batch_size=2", "eval.efficiency.enabled=false",
                 "eval.mtp.num_prompts=1", "eval.mtp.prompt_len=8", "eval.mtp.new_tokens=4",
                 f"model_runtime.experts_implementation={requested}"])
    assert code == 0
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    assert summary["experts_implementation"] == ("grouped_mm" if requested == "auto" else requested)
