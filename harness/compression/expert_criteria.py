"""Expert importance criteria: `(stats: MoELayerStats | None, moe: MoEView) -> [E]`, higher = more important.

Scores are float64; the reducers rank and weight experts with them (SlimQwen eqs 6-8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.registry import Registry

Criterion = Callable[[MoELayerStats | None, Any], torch.Tensor]

criteria: Registry[Criterion] = Registry.of_group("slim.expert_criteria")
