"""Checks and helpers shared by the depth selectors."""

from __future__ import annotations

from slim.harness.calibration.stats import CalibrationStats, DepthStats
from slim.harness.compression.method_support import require_stats
from slim.harness.errors import UserError


def check_num_drop(num_layers: int, num_drop: int) -> None:
    """At least one layer must survive: 0 <= num_drop < num_layers."""
    if not 0 <= num_drop < num_layers:
        raise UserError(f"compress.depth.num_drop: must be in [0, {num_layers - 1}] for a {num_layers}-layer model, "
                        f"got {num_drop}")


def depth_stats(stats: CalibrationStats | None, selector: str, num_layers: int) -> DepthStats:
    """The depth statistics of a pass over this model, or a one-line UserError."""
    stats = require_stats(stats, selector, "compress.depth.selector")
    if stats.depth is None or stats.depth.num_tokens <= 0 or stats.depth.num_sequences <= 0:
        raise UserError(f"compress.depth.selector: {selector!r} needs per-layer cosine statistics; "
                        "the calibration has none")
    covered = {stats.depth.token_cos_sum.numel(), stats.depth.pooled_cos_sum.numel()}
    if covered != {num_layers}:
        raise UserError(f"compress.depth.selector: statistics cover {sorted(covered)} layers, "
                        f"the model has {num_layers}")
    return stats.depth


def keep_all_but(num_layers: int, dropped: set[int]) -> list[int]:
    """Layer ids not in `dropped`, ascending."""
    return [layer for layer in range(num_layers) if layer not in dropped]
