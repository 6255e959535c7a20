"""Width selectors: `(stats: CalibrationStats, hidden_size, target) -> kept hidden dims, ascending`."""

from __future__ import annotations

from collections.abc import Callable

from harness.calibration.stats import CalibrationStats
from harness.registry import Registry

WidthSelector = Callable[[CalibrationStats, int, int], list[int]]

width_selectors: Registry[WidthSelector] = Registry("width selector", package="methods.width")
