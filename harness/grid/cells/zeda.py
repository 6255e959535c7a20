"""Kind `zeda`: `slim zeda` in a cell (inject zero experts, two-stage self-distillation), scored by validation
perplexity of the adapted and original model and the share of routed expert FLOPs skipped."""

from __future__ import annotations

from harness.config.schema import SlimConfig
from harness.grid.cells.run import DISTILL_CURVES
from harness.grid.kinds import CellOutput, register_kind
from methods.adaptations import adaptations

ZEDA_METRICS = ("val_perplexity", "teacher_val_perplexity", "expert_flops_saved", "steps", "wall_seconds")
# Both stages log what distillation logs, plus the share of expert FLOPs skipped (methods/zeda/module.py).
ZEDA_CURVES = (*DISTILL_CURVES, "train/expert_flops_saved", "train/expert_flops_saved/layer_*")


def validate_zeda_cell(cfg: SlimConfig) -> None:
    adaptations.get("zeda").validate(cfg)


@register_kind("zeda", metrics=ZEDA_METRICS, validate=validate_zeda_cell, curves=ZEDA_CURVES)
def zeda_cell(cfg: SlimConfig) -> CellOutput:
    """Adapt the original model with ZEDA; metrics come from its zeda_summary.json."""
    summary = adaptations.get("zeda").run(cfg)
    return CellOutput(metrics={name: float(summary[name]) for name in ZEDA_METRICS},
                      artifacts={"run_dir": cfg.run_dir, "student": summary["output_dir"],
                                 "metrics": cfg.run_dir})  # both stages: one curve
