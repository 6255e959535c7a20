"""ZEDA: zero-output experts in the original MoE, two-stage self-distillation from it, group balancing loss."""

from __future__ import annotations

from methods.adaptations import Adaptation, adaptations
from methods.zeda.stages import run_zeda, validate_zeda

adaptations.register("zeda")(Adaptation(__doc__, validate_zeda, run_zeda))
