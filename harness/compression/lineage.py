"""Where each student layer and expert came from in the ORIGINAL teacher, across chained compressions.

A compression report maps the student to the model it was cut from (kept layers, per-layer expert
groups). A progressive plan cuts a student again, so the maps are composed into a lineage: for every
student decoder layer, the teacher layer it descends from and, for every student expert of that layer,
the teacher experts merged into it. Router-logit KD reads it to compare student and teacher routers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

REPORT_NAME = "compression_report.json"  # beside every student: what was cut, and its lineage
LINEAGE_KEY = "lineage"


@dataclass
class Lineage:
    """`teacher`: the original model's directory; `layers[i]`: teacher layer index of student layer i;
    `experts[i][j]`: teacher expert ids merged into expert j of student layer i (one id when pruned)."""

    teacher: str
    layers: list[int]
    experts: list[list[list[int]]]

    def membership(self, student_layer: int, teacher_experts: int) -> torch.Tensor:
        """[E_teacher, E_student] 0/1 matrix: column j marks the teacher experts inside student expert j."""
        groups = self.experts[student_layer]
        matrix = torch.zeros(teacher_experts, len(groups))
        for new, members in enumerate(groups):
            matrix[members, new] = 1.0
        return matrix


def identity_lineage(teacher: str, num_layers: int, experts_per_layer: list[int]) -> Lineage:
    """The lineage of an uncut model: every layer and expert maps to itself."""
    return Lineage(teacher, list(range(num_layers)), [[[e] for e in range(count)] for count in experts_per_layer])


def compose(source: Lineage, kept_layers: list[int], merge_maps: dict[int, dict[int, int]]) -> Lineage:
    """The lineage after cutting a model whose own lineage is `source`: `kept_layers` are source layer
    indices; `merge_maps[source_layer]` maps source expert id -> new expert index (missing = dropped;
    layers without a map keep their experts)."""
    layers, experts = [], []
    for layer in kept_layers:
        groups = source.experts[layer]
        merge = merge_maps.get(layer)
        if merge is not None:
            new_groups: list[list[int]] = [[] for _ in range(max(merge.values()) + 1)]
            for old, new in merge.items():
                new_groups[new].extend(groups[old])
            groups = [sorted(members) for members in new_groups]
        layers.append(source.layers[layer])
        experts.append(groups)
    return Lineage(source.teacher, layers, experts)


def lineage_from_report(report: dict) -> Lineage | None:
    """The lineage stored in a compression report (None for reports written before lineages existed)."""
    stored = report.get(LINEAGE_KEY)
    return None if stored is None else Lineage(**stored)


def read_lineage(model_dir: str | Path, report_name: str) -> Lineage | None:
    """The lineage of the model in `model_dir`, from its compression report; None for an uncut model."""
    report_file = Path(model_dir) / report_name
    return lineage_from_report(json.loads(report_file.read_text())) if report_file.is_file() else None
