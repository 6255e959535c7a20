"""`linear`: straight line from start to end (SlimQwen's λ: 1 -> 0.75)."""

from __future__ import annotations

from slim.harness.training.weight_schedules import clamp_progress, weight_schedules


@weight_schedules.register("linear")
def linear(start: float, end: float, progress: float) -> float:
    """Linear from `start` at progress 0 to `end` at progress 1 (paper: λ 1 -> 0.75)."""
    return start + (end - start) * clamp_progress(progress)
