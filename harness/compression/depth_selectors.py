"""Depth selectors: `(stats: CalibrationStats | None, num_layers, num_drop) -> kept layer ids, ascending`."""

from __future__ import annotations

from collections.abc import Callable

from slim.harness.calibration.stats import CalibrationStats
from slim.harness.registry import Registry

DepthSelector = Callable[[CalibrationStats | None, int, int], list[int]]

depth_selectors: Registry[DepthSelector] = Registry.of_group("slim.depth_selectors")
