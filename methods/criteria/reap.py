"""`reap` (SlimQwen eq 7, REAP): mean gate-weighted output norm over the tokens routed to the expert.

The gate g_i(x) is the weight the model actually applies to expert i (softmax over all experts, top-k
renormalized when the family does so), as recorded by calibration. Averaging over routed tokens only
makes REAP independent of frequency; an expert that was never routed scores 0.
"""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_criteria import criteria
from slim.methods.criteria._per_token import layer_stats


@criteria.register("reap")
def reap(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """REAP: mean over routed tokens of gate weight x ||expert output||_2 (eq 7); 0 if never routed."""
    stats = layer_stats(stats, "reap")
    routed = stats.freq.double()
    return torch.where(routed > 0, stats.reap.double() / routed.clamp_min(1.0), torch.zeros_like(routed))
