"""`expert_outputs`: experts are similar when they compute alike on the same inputs.

Every expert is run on one shared probe set during calibration (not only on its routed tokens), so
the mean outputs are comparable; the cosine ignores the 1/probe_tokens scale, so the sums are used.
"""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_similarities import similarities
from slim.harness.compression.method_support import require_stats
from slim.harness.errors import UserError
from slim.methods.similarity._cosine import cosine_of_rows


@similarities.register("expert_outputs")
def expert_outputs(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """Cosine between experts' mean outputs on the shared calibration probe set."""
    stats = require_stats(stats, "expert_outputs", "compress.experts.similarity")
    if stats.probe_tokens <= 0:
        raise UserError("compress.experts.similarity: 'expert_outputs' needs probe tokens, "
                        "but calibration recorded none")
    return cosine_of_rows(stats.probe_output_sum)
