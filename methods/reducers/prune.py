"""`prune`: keep the top-N~ experts by importance and drop the rest with their router rows."""

from __future__ import annotations

import torch

from slim.harness.compression.expert_reducers import reducers
from slim.harness.compression.plan import ExpertGroup, ExpertPlan
from slim.harness.compression.ranking import top
from slim.methods.reducers._grouping import check_inputs


@reducers.register("prune")
def prune(importance: torch.Tensor, similarity: torch.Tensor | None, num_keep: int) -> ExpertPlan:
    """Keep the num_keep most important experts unchanged (ties: lower id), drop the others."""
    check_inputs(importance, num_keep)
    groups = [ExpertGroup.single(expert) for expert in top(importance, num_keep)]
    return ExpertPlan(groups=groups, num_experts=importance.numel())
