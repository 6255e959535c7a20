"""Progressive pruning-and-distillation plans (SlimQwen sec 3.3, Table 5, Appendix A.5).

A plan maps the teacher's shape and the final target shape to a list of stages, each an
intermediate target shape plus its share of the token budget. Between stages the current student
is re-calibrated and compressed to the next stage's shape; the teacher stays the original model.
The paper stages depth and width only: experts and top-k keep the teacher's values until the last
stage, which always reaches the final shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slim.harness.registry import Registry


@dataclass(frozen=True)
class Shape:
    """The compressible dimensions of a MoE model."""

    num_layers: int
    hidden_size: int
    num_experts: int
    top_k: int


@dataclass(frozen=True)
class Stage:
    """Compress to `shape`, then distill for `token_share` of the total token budget."""

    shape: Shape
    token_share: float


plans: Registry = Registry.of_group("slim.progressive_plans")


def halfway_layers(teacher: Shape, final: Shape) -> int:
    """Half of the layer reduction (rounded up, so a single-layer cut happens in the first stage)."""
    return teacher.num_layers - math.ceil((teacher.num_layers - final.num_layers) / 2)


def halfway_hidden(teacher: Shape, final: Shape, multiple: int = 8) -> int:
    """Half of the width reduction, rounded to a multiple of 8 (grouped matmul strides)."""
    middle = teacher.hidden_size - (teacher.hidden_size - final.hidden_size) / 2
    return max(final.hidden_size, int(round(middle / multiple)) * multiple)
