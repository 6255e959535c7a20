"""`merge`: keep the top-N~ experts and fold every discarded expert into its most similar kept one.

Each kept expert becomes the importance-weighted average of itself and the experts it absorbed
(SlimQwen eq 8, generalized to any group size) and keeps its own router row.
"""

from __future__ import annotations

import torch

from slim.harness.compression.expert_reducers import reducers
from slim.harness.compression.plan import ExpertPlan
from slim.harness.compression.ranking import ranked
from slim.methods.reducers._grouping import assign_to_nearest, check_inputs, merged_group, require_similarity


@reducers.register("merge")
def merge(importance: torch.Tensor, similarity: torch.Tensor | None, num_keep: int) -> ExpertPlan:
    """Keep the top num_keep experts; merge each other expert into its most similar kept one (eq 8)."""
    check_inputs(importance, num_keep)
    similarity = require_similarity(similarity, "merge", importance.numel())
    order = ranked(importance)
    assigned = assign_to_nearest(similarity, experts=order[num_keep:], targets=order[:num_keep])
    groups = [merged_group(kept, absorbed, importance) for kept, absorbed in assigned.items()]
    return ExpertPlan(groups=groups, num_experts=importance.numel())
