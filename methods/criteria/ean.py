"""`ean`: expert activation norm, the unweighted counterpart of REAP.

Sums ||E_i(x)||_2 over the tokens routed to expert i and divides by all calibration tokens, so an
expert scores high when it is picked often *and* writes large outputs; the gate is ignored.
"""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_criteria import criteria
from slim.methods.criteria._per_token import token_mean


@criteria.register("ean")
def ean(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """Expert activation norm: sum of ||E_i(x)|| over routed tokens, per calibration token (no gate)."""
    return token_mean(stats, "ean", "ean")
