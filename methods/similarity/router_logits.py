"""`router_logits`: experts are similar when the router scores them alike on the calibration tokens.

Expert i's logit column is (l_i(x))_x over all calibration tokens; calibration keeps only the Gram
matrix sum_x l(x) l(x)^T, which is all a cosine between columns needs.
"""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_similarities import similarities
from slim.harness.compression.method_support import require_stats
from slim.methods.similarity._cosine import cosine_from_gram


@similarities.register("router_logits")
def router_logits(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """Cosine between experts' router-logit columns over calibration tokens (from the logit Gram matrix)."""
    return cosine_from_gram(require_stats(stats, "router_logits", "compress.experts.similarity").logit_gram)
