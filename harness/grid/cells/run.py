"""Kind `run`: `slim run` in a cell (calibrate -> compress -> distill, one-shot or progressive)."""

from __future__ import annotations

from slim.harness.compression.recipe import validate_recipe
from slim.harness.config.schema import SlimConfig
from slim.harness.grid.cells._params import PARAM_METRICS, param_metrics
from slim.harness.grid.kinds import CellOutput, register_kind
from slim.harness.models.io import read_model_config
from slim.harness.pipeline import run_recipe
from slim.harness.progressive import plan_stages
from slim.harness.training.distill import validate_distill_config

DISTILL_METRICS = ("val_perplexity", "teacher_val_perplexity", "steps", "tokens_seen", "wall_seconds",
                   "tokens_per_second", "final_lambda", "final_beta")
# What distillation (harness/training) logs per step into the run's metrics CSVs: every loss term a mix may use,
# the loss over the global batch, schedules, gradient norm, throughput and validation. A report's curve may plot
# these; tests/test_grid.py checks a real run's CSV columns against this list.
DISTILL_CURVES = ("train/loss", "train/global_loss", "train/lm", "train/kd", "train/mtp_lm", "train/mtp_kd",
                  "train/balance", "train/router_kd", "train/lambda", "train/beta", "train/lr", "train/grad_norm",
                  "train/tokens_per_sec", "val/loss", "val/ppl", "val/kd")


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
