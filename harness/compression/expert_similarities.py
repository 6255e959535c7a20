"""Expert similarities: `(stats: MoELayerStats | None, moe: MoEView) -> [E, E]` cosine matrix (float64).

Merging reducers use them to send each discarded expert to its nearest kept one (SlimQwen sec 3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.registry import Registry

Similarity = Callable[[MoELayerStats | None, Any], torch.Tensor]

similarities: Registry[Similarity] = Registry.of_group("slim.expert_similarities")
