"""Weight schedules for the loss weights λ and β: `(start, end, progress) -> weight`.

`progress` is global step / total steps of the whole training budget, so the stages of a progressive
plan continue one schedule instead of restarting it; it is clamped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

from slim.harness.registry import Registry

WeightSchedule = Callable[[float, float, float], float]

weight_schedules: Registry[WeightSchedule] = Registry.of_group("slim.weight_schedules")


def clamp_progress(progress: float) -> float:
    """`progress` limited to [0, 1]: before the start the start weight, past the end the end weight."""
    return min(1.0, max(0.0, progress))
