"""`partial_preserve` (SlimQwen Algorithm 1): keep half the target intact, build the other half by merging.

The floor(r·N~) most important experts stay untouched (preserving specialization; r = `intact_ratio`, 1/2
in the paper); the other N~ - floor(r·N~) merge bases are chosen among the rest,
every remaining expert joins its most similar base, and each
base is merged with its group importance-weighted (eq 8). The paper leaves the base choice open:
`base_choice="next_important"` (default) takes the next most important experts,
`"most_similar_to_rest"` the candidates with the highest mean similarity to the other candidates
(the most central ones, so merges stay close to their base). Both are options of this reducer, declared in
partial_preserve_options.py (light, so a config is checked before torch loads) as `compress.experts.base_choice`
and `compress.experts.intact_ratio` and bound by name when the recipe picks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from slim.harness.compression.expert_reducers import reducers
from slim.harness.compression.plan import ExpertGroup, ExpertPlan
from slim.harness.compression.ranking import ranked
from slim.methods.reducers._grouping import assign_to_nearest, check_inputs, merged_group, require_similarity
from slim.methods.reducers.partial_preserve_options import check_options


def _next_important(importance: torch.Tensor, similarity: torch.Tensor, candidates: list[int], n: int) -> list[int]:
    """The n most important candidates."""
    return ranked(importance, candidates)[:n]


def _most_similar_to_rest(importance: torch.Tensor, similarity: torch.Tensor, candidates: list[int],
                          n: int) -> list[int]:
    """The n candidates with the highest mean cosine to the other candidates (ties: lower id)."""
    block = similarity[candidates][:, candidates].double()  # [C, C]
    centrality = torch.zeros(similarity.shape[0], dtype=torch.float64)  # [E], mean cosine to the other candidates
    centrality[candidates] = (block.sum(dim=1) - block.diagonal()) / max(len(candidates) - 1, 1)
    return ranked(centrality, candidates)[:n]


BASES: dict[str, Callable[[torch.Tensor, torch.Tensor, list[int], int], list[int]]] = {
    "next_important": _next_important,
    "most_similar_to_rest": _most_similar_to_rest,
}


@reducers.register("partial_preserve")
def partial_preserve(importance: torch.Tensor, similarity: torch.Tensor | None, num_keep: int, *,
                     base_choice: str = "next_important", intact_ratio: float = 0.5) -> ExpertPlan:
    """Algorithm 1: keep floor(intact_ratio·num_keep) top experts intact, merge the rest into the other bases by
    cosine (intact_ratio in [0, 1), so there is always a base)."""
    check_inputs(importance, num_keep)
    check_options(base_choice, intact_ratio)
    similarity = require_similarity(similarity, "partial_preserve", importance.numel())
    order = ranked(importance)
    num_intact = math.floor(intact_ratio * num_keep)
    intact, candidates = order[:num_intact], order[num_intact:]
    bases = BASES[base_choice](importance, similarity, candidates, num_keep - num_intact)
    rest = sorted(set(candidates) - set(bases))
    assigned = assign_to_nearest(similarity, experts=rest, targets=bases)
    groups = {expert: ExpertGroup.single(expert) for expert in intact}
    groups.update({base: merged_group(base, absorbed, importance) for base, absorbed in assigned.items()})
    return ExpertPlan(groups=[groups[expert] for expert in sorted(groups)], num_experts=importance.numel())
