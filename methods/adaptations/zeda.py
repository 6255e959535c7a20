"""ZEDA: zero-output experts in the original MoE, two-stage self-distillation from it, group balancing loss."""

from __future__ import annotations

from slim.harness.adaptations import Adaptation, adaptations
from slim.harness.training.distill import DISTILL_CURVES
from slim.methods.zeda.stages import run_zeda, validate_zeda

METRICS = ("val_perplexity", "teacher_val_perplexity", "expert_flops_saved", "steps", "wall_seconds")
# Both stages log what distillation logs, plus the share of expert FLOPs skipped (methods/zeda/module.py).
CURVES = (*DISTILL_CURVES, "train/expert_flops_saved", "train/expert_flops_saved/layer_*")

adaptations.register("zeda")(Adaptation(__doc__, validate_zeda, run_zeda, METRICS, CURVES))
