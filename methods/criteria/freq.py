"""`freq` (SlimQwen eq 6, left): an expert matters as often as the router picks it."""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_criteria import criteria
from slim.methods.criteria._per_token import token_mean


@criteria.register("freq")
def freq(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """Routing frequency: share of calibration tokens whose top-k contains the expert (eq 6 left)."""
    return token_mean(stats, "freq", "freq")
