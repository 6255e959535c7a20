"""Router-logit KD: lineages compose across chained cuts, the loss matches a per-token loop, an uncut student
scores zero, and students that cannot be matched to the teacher are refused before training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from slim.harness.compression.compress import compress
from slim.harness.compression.lineage import REPORT_NAME, compose, identity_lineage, read_lineage
from slim.harness.config.load import load_config
from slim.harness.errors import UserError
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.router_kd import RouterMap, router_kd_loss, student_lineage
from tests.fixtures.compress_teacher import recipe


def test_lineage_composes_layer_and_expert_maps():
    """Cut 1 keeps layers 0,2,3 and merges experts {0,1}->0, {3}->1 in layer 2; cut 2 keeps layers 0,1 of the result
    and merges that layer's new experts {0,1}->0. Every student expert names its teacher experts."""
    first = compose(identity_lineage("T", 4, [4, 4, 4, 4]), [0, 2, 3], {2: {0: 0, 1: 0, 3: 1}})
    assert first.layers == [0, 2, 3]
    assert first.experts[1] == [[0, 1], [3]]
    second = compose(first, [0, 1], {1: {0: 0, 1: 0}})
    assert second.layers == [0, 2] and second.teacher == "T"
    assert second.experts == [[[0], [1], [2], [3]], [[0, 1, 3]]]
    assert second.membership(1, 4).tolist() == [[1.0], [1.0], [0.0], [1.0]]


def test_router_kd_matches_a_per_token_loop():
    """Against a hand loop: target_j = sum of teacher probs in group j renormalized; KL summed over experts,
    averaged over tokens and layers."""
    torch.manual_seed(0)
    teacher_logits = [torch.randn(5, 6), torch.randn(5, 6)]
    student_logits = [torch.randn(5, 3), torch.randn(5, 2)]
    groups = [[[0, 1], [2], [5]], [[3], [4]]]
    membership = [torch.zeros(6, len(g)) for g in groups]
    for matrix, layer_groups in zip(membership, groups):
        for j, members in enumerate(layer_groups):
            matrix[members, j] = 1.0
    expected = 0.0
    for t_logits, s_logits, layer_groups in zip(teacher_logits, student_logits, groups):
        total = 0.0
        for token in range(5):
            p = torch.softmax(t_logits[token], -1).tolist()
            q = [sum(p[e] for e in members) for members in layer_groups]
            q = [value / sum(q) for value in q]
            s = torch.softmax(s_logits[token], -1).tolist()
            total += sum(qj * math.log(qj / sj) for qj, sj in zip(q, s))
        expected += total / 5 / 2
    # The map lists layers in teacher order reversed to check positions are honoured.
    loss = router_kd_loss(student_logits, teacher_logits[::-1], RouterMap([1, 0], membership))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _module(teacher_dir, student_dir, weight: float = 1.0) -> DistillModule:
    cfg = load_config([f"distill.teacher={teacher_dir}", f"distill.student={student_dir}", "distill.loss=kd",
                       f"distill.router_kd_weight={weight}"])
    module = DistillModule(cfg.distill, cfg.train)
    module.configure_model()
    return module


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def test_uncut_student_has_zero_router_kd_and_a_merged_one_does_not(teacher, tmp_path):
    """Compressing with no cut gives the teacher's routers back (router KD 0); dropping a layer and merging experts
    gives a positive term that enters the total loss with its weight."""
    compress(recipe(teacher, tmp_path / "same", f"compress.output={tmp_path / 'same' / 'student'}"))
    with torch.no_grad():
        same = _module(teacher[0], tmp_path / "same" / "student").step_loss(_batch())
    assert same.terms["router_kd"].item() == pytest.approx(0.0, abs=1e-6)

    cut = recipe(teacher, tmp_path, "compress.depth.num_drop=1", "compress.experts.num_experts=4",
                 "compress.experts.reducer=merge")
    compress(cut)
    lineage = read_lineage(cut.compress.output, REPORT_NAME)
    assert lineage.layers == [0, 1, 2] and all(len(groups) == 4 for groups in lineage.experts)
    with torch.no_grad():
        weighted, plain = (_module(teacher[0], cut.compress.output, weight).step_loss(_batch())
                           for weight in (2.0, 1.0))
    assert weighted.terms["router_kd"].item() > 1e-3
    assert weighted.total - plain.total == pytest.approx(weighted.terms["router_kd"].item(), rel=1e-4)


def test_students_without_a_lineage_to_the_teacher_are_refused(teacher, tmp_path):
    cut = recipe(teacher, tmp_path, "compress.depth.num_drop=1")
    compress(cut)
    with pytest.raises(UserError, match="distill.router_kd_weight: the student descends from .* not from the teacher"):
        student_lineage(cut.compress.output, tmp_path)
    (tmp_path / "student" / REPORT_NAME).unlink()
    with pytest.raises(UserError, match=f"distill.router_kd_weight: the student .* has no {REPORT_NAME}"):
        student_lineage(cut.compress.output, teacher[0])


def test_a_second_cut_keeps_the_lineage_to_the_original_teacher(teacher, tmp_path):
    """Compressing a compressed student again composes the maps: layers index the ORIGINAL teacher."""
    first = recipe(teacher, tmp_path, "compress.depth.num_drop=1")
    compress(first)
    second = load_config([*teacher[2], f"compress.teacher={first.compress.output}",
                          f"compress.output={tmp_path / 'student2'}", "compress.depth.num_drop=1",
                          "compress.depth.selector=last_n"])
    compress(second)
    report = json.loads((tmp_path / "student2" / REPORT_NAME).read_text())
    assert report["lineage"]["teacher"] == str(teacher[0]) and report["lineage"]["layers"] == [0, 1]
