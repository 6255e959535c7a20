"""`act_sim` (SlimQwen eq 15): drop a contiguous chunk starting at the layer that changes its input least.

c_l is the cosine between the token-mean pooled outputs of layers l-1 and l (layer l's input is
layer l-1's output, so c_l = pooled_cos_sum[l] / num_sequences), for l = 1..L-1 (0-based; eq 15's
l = 2..L). The chunk [l*, l*+N) starts at l* = argmax c_l; when it would run past the last layer it
is shifted back to [L-N, L), so it still contains the most similar layer.
"""

from __future__ import annotations

import torch

from slim.harness.calibration.stats import CalibrationStats
from slim.harness.compression.depth_selectors import depth_selectors
from slim.harness.compression.method_support import scored_by
from slim.methods.depth._layers import check_num_drop, depth_stats, keep_all_but


def adjacent_cosine(stats: CalibrationStats | None, num_layers: int) -> torch.Tensor:
    """c_l [L] of eq 15, float64: mean over sequences of cos(pooled input, pooled output) of layer l; entry 0
    compares layer 0 with the embeddings and is never a chunk start."""
    depth = depth_stats(stats, "act_sim", num_layers)
    return depth.pooled_cos_sum.double() / depth.num_sequences


@depth_selectors.register("act_sim")
@scored_by(adjacent_cosine)
def act_sim(stats: CalibrationStats | None, num_layers: int, num_drop: int) -> list[int]:
    """Drop num_drop contiguous layers from the one whose pooled output is most similar to its input (eq 15)."""
    check_num_drop(num_layers, num_drop)
    if num_drop == 0:
        return list(range(num_layers))
    adjacent_cos = adjacent_cosine(stats, num_layers)  # [L]
    most_similar = 1 + int(adjacent_cos[1:].argmax())  # first maximum over l = 1..L-1
    start = min(most_similar, num_layers - num_drop)
    return keep_all_but(num_layers, set(range(start, start + num_drop)))
