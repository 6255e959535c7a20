"""Kind `run`: `slim run` in a cell (calibrate -> compress -> distill, one-shot or progressive)."""

from __future__ import annotations

from slim.harness.compression.recipe import validate_recipe
from slim.harness.config.schema import SlimConfig
from slim.harness.grid.cells._params import PARAM_METRICS, param_metrics
from slim.harness.grid.kinds import CellOutput, register_kind
from slim.harness.models.io import read_model_config
from slim.harness.pipeline import run_recipe
from slim.harness.progressive import plan_stages
from slim.harness.training.distill import DISTILL_CURVES, validate_distill_config

DISTILL_METRICS = ("val_perplexity", "teacher_val_perplexity", "steps", "tokens_seen", "wall_seconds",
                   "tokens_per_second", "final_lambda", "final_beta")


def validate_run(cfg: SlimConfig) -> None:
    """Loss/schedule keys, the compression recipe against the teacher's config and the plan's stages."""
    validate_distill_config(cfg)
    teacher = read_model_config(cfg.compress.teacher, "compress.teacher")
    validate_recipe(cfg.compress, teacher)
    plan_stages(cfg, teacher)


@register_kind("run", metrics=(*DISTILL_METRICS, *PARAM_METRICS), validate=validate_run, curves=DISTILL_CURVES,
               calibrates=True)
def run_cell(cfg: SlimConfig) -> CellOutput:
    """Compress and distill the student; metrics are the final distillation summary and parameter counts."""
    summary = run_recipe(cfg)
    distilled = summary["distill"]
    metrics = {name: float(distilled[name]) for name in DISTILL_METRICS}
    return CellOutput(
        metrics={**metrics, **param_metrics(summary["params"])},
        artifacts={"run_dir": cfg.run_dir, "student": cfg.distill.output, "metrics": cfg.run_dir},
    )
