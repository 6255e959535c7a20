"""An expert plan: which old experts become which new expert, and with what interpolation weights.

Reducers (methods/reducers) produce a plan from importance and similarity; `apply_plan` turns it into
new router / expert tensors. Pruning is a plan of single-member groups with weight 1, merging a plan
whose groups average several experts (SlimQwen eq 8), so one code path builds every student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHT_SUM_TOL = 1e-6


def _require(condition: bool, message: str) -> None:
    """Plans come from code, not users: a malformed one is a ValueError, raised even under `python -O`."""
    if not condition:
        raise ValueError(f"invalid expert plan: {message}")


@dataclass(frozen=True)
class ExpertGroup:
    """One new expert = sum_m weights[m] * old expert members[m] (gate_up_proj and down_proj alike);
    its router row is copied from old expert `router_row`, which must be a member."""

    members: tuple[int, ...]
    weights: tuple[float, ...]
    router_row: int

    def __post_init__(self) -> None:
        _require(len(self.members) > 0, "an expert group needs at least one member")
        _require(len(self.weights) == len(self.members), f"{len(self.weights)} weights for {len(self.members)} members")
        _require(len(set(self.members)) == len(self.members), f"repeated member in {self.members}")
        _require(abs(sum(self.weights) - 1.0) <= WEIGHT_SUM_TOL, f"weights {self.weights} do not sum to 1")
        _require(self.router_row in self.members, f"router_row {self.router_row} is not a member of {self.members}")

    @classmethod
    def single(cls, expert: int) -> ExpertGroup:
        """The group that keeps `expert` unchanged."""
        return cls(members=(expert,), weights=(1.0,), router_row=expert)


@dataclass
class ExpertPlan:
    """The new experts of one MoE layer of `num_experts` experts, in order; old experts in no group are dropped."""

    groups: list[ExpertGroup]
    num_experts: int

    def __post_init__(self) -> None:
        members = [m for group in self.groups for m in group.members]
        _require(len(self.groups) > 0, "a plan keeps at least one expert")
        _require(len(set(members)) == len(members), f"an expert belongs to several groups: {sorted(members)}")
        _require(all(0 <= m < self.num_experts for m in members), f"member ids outside [0, {self.num_experts})")

    @property
    def num_kept(self) -> int:
        """Number of experts after the plan is applied."""
        return len(self.groups)

    def kept_ids(self) -> list[int]:
        """Old id whose router row each new expert inherits, in new-expert order."""
        return [group.router_row for group in self.groups]

    def merge_map(self) -> dict[int, int]:
        """Old expert id -> new expert index, for every old expert that survives in some group."""
        return {member: new for new, group in enumerate(self.groups) for member in group.members}

    def dropped_ids(self) -> list[int]:
        """Old experts that are in no group (pruned outright), ascending."""
        return sorted(set(range(self.num_experts)) - set(self.merge_map()))

    def is_identity(self) -> bool:
        """True when the plan keeps every expert unchanged and in place."""
        return self.groups == [ExpertGroup.single(e) for e in range(self.num_experts)]


def _combine(per_expert: torch.Tensor, group: ExpertGroup) -> torch.Tensor:
    """per_expert [E, ...] -> sum_m w_m * per_expert[members[m]] [...], accumulated in float64 and cast back
    (so a single member with weight 1 comes back bit-identical)."""
    members = per_expert[list(group.members)].double()  # [m, ...]
    coeffs = torch.tensor(group.weights, dtype=torch.float64, device=per_expert.device)
    coeffs = coeffs.reshape(-1, *[1] * (members.dim() - 1))
    return (coeffs * members).sum(dim=0).to(per_expert.dtype)


@torch.no_grad()
def combine_experts(per_expert: torch.Tensor, plan: ExpertPlan) -> torch.Tensor:
    """per_expert [E, ...] (weights or biases) -> [E', ...], one combination per group in plan order."""
    return torch.stack([_combine(per_expert, group) for group in plan.groups])


@torch.no_grad()
def apply_plan(
    plan: ExpertPlan, router: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """router [E, d], gate_up_proj [E, 2I, d], down_proj [E, d, I] -> the same with E' = plan.num_kept.

    Returns new tensors (never views of the inputs), one row per group in plan order.
    """
    sizes = {router.shape[0], gate_up_proj.shape[0], down_proj.shape[0]}
    _require(sizes == {plan.num_experts}, f"tensors hold {sizes} experts, plan expects {plan.num_experts}")
    new_router = router[plan.kept_ids()]  # advanced indexing copies
    return new_router, combine_experts(gate_up_proj, plan), combine_experts(down_proj, plan)
