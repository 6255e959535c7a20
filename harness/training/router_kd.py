"""Router-logit distillation: each student MoE router matches its teacher layer's routing distribution.

For student MoE layer i descending from teacher layer L(i) (slim.harness.compression.lineage), the target
over the student's experts is the teacher's router softmax summed over the teacher experts merged into
each student expert, renormalized over the kept experts (pruned experts' mass is dropped):

    q_j = Σ_{e ∈ G_j} softmax(z^T_L)_e / Σ_{j'} Σ_{e ∈ G_j'} softmax(z^T_L)_e
    L_router = mean_i mean_tokens KL(q ‖ softmax(z^S_i))

Temperature 1: the router's own softmax is what top-k selection and the expert weights use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from slim.harness.compression.lineage import REPORT_NAME, Lineage, read_lineage
from slim.harness.errors import UserError
from slim.harness.models.view import view


@dataclass
class RouterMap:
    """Per student MoE layer (forward order): the teacher MoE layer's position in the teacher's forward order
    and the [E_teacher, E_student] membership matrix."""

    teacher_positions: list[int]
    membership: list[torch.Tensor]


def student_lineage(student_dir: str | Path, teacher_dir: str | Path) -> Lineage:
    """The student's lineage, refused unless it was compressed (possibly in stages) from `teacher_dir`."""
    lineage = read_lineage(student_dir, REPORT_NAME)
    if lineage is None:
        raise UserError(f"distill.router_kd_weight: the student {student_dir} has no {REPORT_NAME} with a lineage, "
                        "so its experts cannot be matched to the teacher's; use a `slim compress` output or set 0")
    if Path(lineage.teacher).resolve() != Path(teacher_dir).resolve():
        raise UserError(f"distill.router_kd_weight: the student descends from {lineage.teacher}, not from the "
                        f"teacher {teacher_dir}; router KD needs the model it was cut from, or set 0")
    return lineage


def build_router_map(lineage: Lineage, student: PreTrainedModel, teacher: PreTrainedModel) -> RouterMap:
    """Match every student MoE layer to its teacher MoE layer through the lineage."""
    teacher_moe = {layer.index: (position, layer.moe.router.shape[0])
                   for position, layer in enumerate(view(teacher).moe_layers())}
    positions, membership = [], []
    for layer in view(student).moe_layers():
        position, teacher_experts = teacher_moe[lineage.layers[layer.index]]
        positions.append(position)
        membership.append(lineage.membership(layer.index, teacher_experts))
    return RouterMap(positions, membership)


def router_kd_loss(student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor],
                   router_map: RouterMap) -> torch.Tensor:
    """Mean over student MoE layers of the token-mean KL(q ‖ softmax(student router logits)) (module docstring)."""
    per_layer = []
    for student, position, membership in zip(student_logits, router_map.teacher_positions, router_map.membership,
                                             strict=True):
        teacher = teacher_logits[position].float()
        target = teacher.softmax(-1) @ membership.to(teacher.device)
        target = target / target.sum(-1, keepdim=True)
        per_layer.append(F.kl_div(student.float().log_softmax(-1), target, reduction="batchmean"))
    return torch.stack(per_layer).mean()
