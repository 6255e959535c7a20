"""`constant`: the start weight throughout (fixed-λ/β ablations)."""

from __future__ import annotations

from slim.harness.training.weight_schedules import weight_schedules


@weight_schedules.register("constant")
def constant(start: float, end: float, progress: float) -> float:
    """Always `start`; `end` and `progress` are ignored."""
    return start
