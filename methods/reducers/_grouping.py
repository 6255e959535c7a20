"""Building blocks shared by the reducers: input checks, nearest-base assignment, eq-8 weights."""

from __future__ import annotations

import torch

from slim.harness.compression.plan import ExpertGroup
from slim.harness.errors import UserError


def check_inputs(importance: torch.Tensor, num_keep: int) -> None:
    """One-line UserErrors for a target outside [1, E] or importance scores that cannot be ranked."""
    num_experts = importance.numel()
    if not 1 <= num_keep <= num_experts:
        raise UserError(f"compress.experts.num_experts: must keep between 1 and {num_experts} experts, got {num_keep}")
    if not torch.isfinite(importance).all():
        raise UserError("compress.experts.criterion: importance scores contain NaN or inf")


def require_similarity(similarity: torch.Tensor | None, reducer: str, num_experts: int) -> torch.Tensor:
    """The [E, E] similarity a merging reducer needs, or a UserError naming `compress.experts.similarity`."""
    if similarity is None:
        raise UserError(f"compress.experts.similarity: reducer {reducer!r} merges experts and needs a similarity; "
                        "none was set")
    assert similarity.shape == (num_experts, num_experts), f"similarity {tuple(similarity.shape)} for {num_experts}"
    return similarity


def assign_to_nearest(similarity: torch.Tensor, experts: list[int], targets: list[int]) -> dict[int, list[int]]:
    """target -> the `experts` whose most similar target it is (ties: lower target id), both ascending."""
    targets = sorted(targets)
    assigned: dict[int, list[int]] = {target: [] for target in targets}
    for expert in sorted(experts):
        nearest = int(similarity[expert, targets].argmax())  # argmax returns the first maximum
        assigned[targets[nearest]].append(expert)
    return assigned


def merged_group(base: int, absorbed: list[int], importance: torch.Tensor) -> ExpertGroup:
    """`base` merged with `absorbed`, weighted w_m = I_m / sum I (SlimQwen eq 8 for any group size);
    equal weights when the group's importances sum to 0. The router row is the base's."""
    members = (base, *absorbed)
    scores = importance[list(members)].double()
    if (scores < 0).any():
        raise UserError("compress.experts.criterion: merge weights need non-negative importance scores")
    total = scores.sum()
    weights = scores / total if total > 0 else torch.full_like(scores, 1.0 / len(members))
    return ExpertGroup(members=members, weights=tuple(weights.tolist()), router_row=base)
