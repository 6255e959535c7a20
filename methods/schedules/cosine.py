"""`cosine`: half-cosine from start to end (SlimQwen's β: 0.3 -> 0.1)."""

from __future__ import annotations

import math

from slim.harness.training.weight_schedules import clamp_progress, weight_schedules


@weight_schedules.register("cosine")
def cosine(start: float, end: float, progress: float) -> float:
    """Cosine decay from `start` at progress 0 to `end` at progress 1, flat at both ends (paper: β 0.3 -> 0.1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * clamp_progress(progress)))
