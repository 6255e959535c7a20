"""`last_n` (SlimQwen eq 4): drop the last N layers; the paper's default, it beats similarity-based cuts."""

from __future__ import annotations

from slim.harness.calibration.stats import CalibrationStats
from slim.harness.compression.depth_selectors import depth_selectors
from slim.methods.depth._layers import check_num_drop


@depth_selectors.register("last_n")
def last_n(stats: CalibrationStats | None, num_layers: int, num_drop: int) -> list[int]:
    """Keep layers 0 .. L-N-1, i.e. drop the last num_drop layers (eq 4; no statistics needed)."""
    check_num_drop(num_layers, num_drop)
    return list(range(num_layers - num_drop))
