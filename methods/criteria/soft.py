"""`soft` (SlimQwen eq 6, right): frequency weighted by how much of the top-k router mass the expert holds."""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_criteria import criteria
from slim.methods.criteria._per_token import token_mean


@criteria.register("soft")
def soft(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """Soft logits: mean over tokens of the expert's router score normalized over the top-k (eq 6 right)."""
    return token_mean(stats, "soft", "soft")
