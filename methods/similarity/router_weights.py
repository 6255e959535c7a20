"""`router_weights`: data-free similarity, experts whose router rows point the same way get the same tokens."""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_similarities import similarities
from slim.methods.similarity._cosine import cosine_of_rows


@similarities.register("router_weights")
def router_weights(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """Cosine between experts' router weight rows (no calibration statistics needed)."""
    return cosine_of_rows(moe.router)
