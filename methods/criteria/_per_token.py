"""Turns the per-layer calibration sums into the paper's expectations over calibration tokens."""

from __future__ import annotations

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.method_support import require_stats
from slim.harness.errors import UserError

FIELD = "compress.experts.criterion"


def layer_stats(stats: MoELayerStats | None, criterion: str) -> MoELayerStats:
    """The layer's statistics, checked to be present and non-empty."""
    stats = require_stats(stats, criterion, FIELD)
    if stats.num_tokens <= 0:
        raise UserError(f"{FIELD}: {criterion!r} needs calibration tokens, but this layer's statistics saw none")
    return stats


def token_mean(stats: MoELayerStats | None, criterion: str, sum_name: str) -> torch.Tensor:
    """E_x[...] of the per-expert sum `sum_name`: the sum [E] divided by the number of calibration tokens."""
    stats = layer_stats(stats, criterion)
    return getattr(stats, sum_name).double() / stats.num_tokens
