"""Inference backends measured beside transformers for Table 11 (`eval.efficiency.backends`), one module each.

A backend loads a model directory itself (in its own process, so its GPU memory is freed after) and times
prefill and decode on the same prompt token ids as the transformers runs. `unavailable()` names why it cannot run
here (package not installed, no GPU); `slim eval` then records it as skipped instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slim.harness.config.schema import EfficiencyConfig
from slim.harness.registry import Registry

# (model directory, prompts as token ids [B][P], settings) -> {"prefill_tokens_per_s": ..., "decode_tokens_per_s": ...}
Measure = Callable[[str, list[list[int]], EfficiencyConfig], dict[str, float]]
SPEED_RATIOS = ("prefill_speedup", "decode_speedup")


@dataclass(frozen=True)
class InferenceBackend:
    """How to time a model directory under one inference engine; `doc` is what `slim methods` lists."""

    doc: str
    unavailable: Callable[[], str | None]
    measure: Measure

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.doc)


inference_backends: Registry[InferenceBackend] = Registry.of_group("slim.inference_backends")


def speed_ratios(student: dict[str, float], teacher: dict[str, float]) -> dict[str, float]:
    """Student over teacher throughput (> 1 is faster), as the transformers runs' ratios."""
    return {"prefill_speedup": student["prefill_tokens_per_s"] / teacher["prefill_tokens_per_s"],
            "decode_speedup": student["decode_tokens_per_s"] / teacher["decode_tokens_per_s"]}


def backend_summaries(names: list[str], model_dir: str, teacher_dir: str, prompts: list[list[int]],
                      settings: EfficiencyConfig) -> dict[str, dict]:
    """Per backend: the model's (and teacher's) throughput and their ratios, or {"skipped": why}."""
    summaries: dict[str, dict] = {}
    for name in names:
        backend = inference_backends.get(name, "eval.efficiency.backends")
        reason = backend.unavailable()
        if reason is not None:
            summaries[name] = {"skipped": reason}
            continue
        measured = {"model": backend.measure(model_dir, prompts, settings)}
        if teacher_dir:
            measured["teacher"] = backend.measure(teacher_dir, prompts, settings)
            measured["student_vs_teacher"] = speed_ratios(measured["model"], measured["teacher"])
        summaries[name] = measured
    return summaries
