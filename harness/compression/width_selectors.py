"""Width selectors: `(stats: CalibrationStats, hidden_size, target) -> kept hidden dims, ascending`."""

from __future__ import annotations

from collections.abc import Callable

from slim.harness.calibration.stats import CalibrationStats
from slim.harness.registry import Registry

WidthSelector = Callable[[CalibrationStats, int, int], list[int]]

width_selectors: Registry[WidthSelector] = Registry.of_group("slim.width_selectors")
