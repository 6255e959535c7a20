"""`block_influence` (ShortGPT): drop the layers that change their input least, wherever they are.

BI_l = 1 - E_t[cos(h_in_t, h_out_t)] over calibration tokens; the num_drop lowest-BI layers go
(ties: the lower layer id goes first).
"""

from __future__ import annotations

import torch

from slim.harness.calibration.stats import CalibrationStats
from slim.harness.compression.depth_selectors import depth_selectors
from slim.harness.compression.method_support import scored_by
from slim.harness.compression.ranking import ranked
from slim.methods.depth._layers import check_num_drop, depth_stats, keep_all_but


def influence(stats: CalibrationStats | None, num_layers: int) -> torch.Tensor:
    """BI_l [L], float64: 1 - mean over calibration tokens of cos(input, output) of layer l."""
    depth = depth_stats(stats, "block_influence", num_layers)
    return 1.0 - depth.token_cos_sum.double() / depth.num_tokens


@depth_selectors.register("block_influence")
@scored_by(influence)
def block_influence(stats: CalibrationStats | None, num_layers: int, num_drop: int) -> list[int]:
    """Drop the num_drop layers with the lowest block influence 1 - mean token cos(input, output)."""
    check_num_drop(num_layers, num_drop)
    if num_drop == 0:
        return list(range(num_layers))
    return keep_all_but(num_layers, set(ranked(-influence(stats, num_layers))[:num_drop]))
