"""Compression figures: the data each figure plots equals the report's numbers, and compress writes them as images."""

from __future__ import annotations

import json
import logging
import math

from PIL import Image

from slim.harness.cli.main import main
from slim.harness.compression.compress import compress
from slim.harness.compression.lineage import REPORT_NAME
from slim.harness.grid.figures import write_cell_figures
from slim.reports.compression import DROPPED, KEPT, MERGED, depth_curves, expert_matrix, expert_status, width_importance
from slim.reports.compression_figures import PLOTS, figure_names, merge_colors, row_normalized
from tests.fixtures.compress_teacher import recipe


def hand_report() -> dict:
    """Two reduced layers of 4 teacher experts, a 4-layer depth curve and a 6-dim width cut, as compress writes."""
    return {
        "recipe": {"experts": {"criterion": "reap"}, "depth": {"selector": "last_n"},
                   "width": {"selector": "rmsnorm_mean_abs"}},
        "kept_layers": [0, 1, 3],
        "kept_dims": [0, 2, 3, 5],
        "experts": {
            "0": {"kept": 2, "kept_ids": [1, 3], "dropped_ids": [2], "merge_map": {"0": 0, "1": 0, "3": 1},
                  "scores": [0.5, 2.0, 0.0, 1.0]},
            "3": {"kept": 3, "kept_ids": [0, 1, 2], "dropped_ids": [3], "merge_map": {"0": 0, "1": 1, "2": 2},
                  "scores": [3.0, 1.5, 0.75, 0.25]},
        },
        "depth_scores": {"act_sim": [0.9, 0.8, 0.99, 0.7], "block_influence": [0.3, 0.2, 0.01, 0.4]},
        "width_scores": {"rmsnorm_mean_abs": [0.9, 0.1, 0.8, 0.7, 0.2, 0.6]},
    }


def test_expert_status_from_a_merge_map():
    """Alone in its student expert = kept, sharing one = merged, in none = dropped; targets follow the map."""
    status, target = expert_status({0: 0, 1: 0, 3: 1, 4: 2, 5: 2}, 6)
    assert status == [MERGED, MERGED, DROPPED, KEPT, MERGED, MERGED]
    assert target == [0, 0, None, 1, 2, 2]


def test_expert_matrix_holds_the_reports_scores_and_maps():
    """Rows are the reduced layers in order; scores, status, targets and bases are the report's."""
    matrix = expert_matrix(hand_report())
    assert (matrix.criterion, matrix.layers, matrix.num_experts) == ("reap", [0, 3], 4)
    assert matrix.scores == [[0.5, 2.0, 0.0, 1.0], [3.0, 1.5, 0.75, 0.25]]
    assert matrix.status == [[MERGED, MERGED, DROPPED, KEPT], [KEPT, KEPT, KEPT, DROPPED]]
    assert matrix.target == [[0, 0, None, 1], [0, 1, 2, None]]
    assert matrix.bases == [[1, 3], [0, 1, 2]]
    assert row_normalized(matrix.scores) == [[0.25, 1.0, 0.0, 0.5], [1.0, 0.5, 0.25, 0.25 / 3]]
    assert merge_colors(matrix) == [[2, 2, 0, 1], [1, 1, 1, 0]]  # group 0 takes the first group colour


def test_rows_of_fewer_experts_are_padded():
    """A layer with fewer teacher experts (a global-budget student cut again) pads with no score, dropped."""
    report = hand_report()
    report["experts"]["3"] = {"kept": 1, "kept_ids": [0], "dropped_ids": [1], "merge_map": {"0": 0},
                              "scores": [1.0, 0.5]}
    matrix = expert_matrix(report)
    assert matrix.scores[1] == [1.0, 0.5, None, None]
    assert matrix.status[1] == [KEPT, DROPPED, DROPPED, DROPPED]
    assert math.isnan(row_normalized(matrix.scores)[1][3])


def test_no_expert_figures_when_experts_are_kept():
    """A recipe without an expert target has no expert matrix, so no expert figures."""
    assert expert_matrix({**hand_report(), "experts": {}}) is None
    assert figure_names({**hand_report(), "experts": {}}) == ["compression_depth", "compression_width"]


def test_depth_curves_shade_the_dropped_layers():
    """Every recorded curve is plotted as recorded; dropped = teacher layers not kept."""
    depth = depth_curves(hand_report())
    assert depth.selector == "last_n" and depth.dropped == [2]
    assert depth.curves == hand_report()["depth_scores"]
    assert depth_curves({**hand_report(), "depth_scores": {}}) is None


def test_width_cut_line_is_the_lowest_kept_importance():
    """Kept dims are the report's, the cut line their lowest importance, and no line without a width cut."""
    width = width_importance(hand_report())
    assert width.scores == [0.9, 0.1, 0.8, 0.7, 0.2, 0.6]
    assert width.kept == [True, False, True, True, False, True] and width.cut == 0.6
    uncut = width_importance({**hand_report(), "kept_dims": list(range(6))})
    assert uncut.cut is None and all(uncut.kept)


def slim_compress(teacher, tmp_path, *overrides: str) -> int:
    """`slim compress` in this process on the tiny teacher, writing tmp_path/student."""
    teacher_dir, stats, base = teacher
    return main(["compress", *base, f"compress.teacher={teacher_dir}", f"compress.stats={stats}",
                 f"compress.output={tmp_path / 'student'}", *overrides])


def test_slim_compress_writes_the_figures_from_its_report(teacher, tmp_path):
    """Depth, width and experts cut together: the report records the scores the figures plot, and the 4 figures
    are written beside it as valid PNG and PDF files."""
    assert slim_compress(teacher, tmp_path, "compress.depth.num_drop=1", "compress.depth.selector=block_influence",
                         "compress.width.hidden_size=48", "compress.experts.num_experts=4",
                         "compress.experts.top_k=1", "compress.experts.reducer=partial_preserve") == 0
    student = tmp_path / "student"
    report = json.loads((student / REPORT_NAME).read_text())
    assert set(report["depth_scores"]) == {"act_sim", "block_influence"}
    assert all(len(scores) == 4 for scores in report["depth_scores"].values())
    dropped = min(range(4), key=lambda layer: report["depth_scores"]["block_influence"][layer])
    assert depth_curves(report).dropped == [dropped] and dropped not in report["kept_layers"]
    width = width_importance(report)
    assert len(width.scores) == 64 and sum(width.kept) == 48
    assert all(score >= width.cut for score, keep in zip(width.scores, width.kept) if keep)
    assert all(score <= width.cut for score, keep in zip(width.scores, width.kept) if not keep)
    matrix = expert_matrix(report)
    assert matrix.layers == report["kept_layers"] and matrix.num_experts == 8
    for layer, scores in zip(matrix.layers, matrix.scores):
        assert scores == report["experts"][str(layer)]["scores"]
    assert figure_names(report) == list(PLOTS)
    for name in PLOTS:
        with Image.open(student / f"{name}.png") as image:
            image.verify()
        assert (student / f"{name}.pdf").read_bytes().startswith(b"%PDF-")


def test_the_report_records_the_criterion_scores_the_plan_used(teacher, tmp_path):
    """prune by freq keeps each layer's num_experts highest recorded scores, so the scores are the ones ranked."""
    report = compress(recipe(teacher, tmp_path, "compress.experts.num_experts=4", "compress.experts.criterion=freq"))
    for entry in report["experts"].values():
        ranked = sorted(range(8), key=lambda expert: (-entry["scores"][expert], expert))
        assert sorted(entry["kept_ids"]) == sorted(ranked[:4])


def test_a_plotting_failure_keeps_the_student(teacher, tmp_path, monkeypatch, caplog):
    """When plotting raises, the student and its report are written, `slim compress` succeeds and one warning line
    says why."""
    import slim.reports.compression_figures

    def broken(report, out_dir):
        raise RuntimeError("no backend")

    monkeypatch.setattr(slim.reports.compression_figures, "write_compression_figures", broken)
    with caplog.at_level(logging.WARNING, logger="slim.harness.compression.compress"):
        assert slim_compress(teacher, tmp_path, "compress.experts.num_experts=4") == 0
    assert (tmp_path / "student" / REPORT_NAME).is_file() and (tmp_path / "student" / "config.json").is_file()
    assert [record.getMessage() for record in caplog.records] == [
        f"compression figures not written in {tmp_path / 'student'}: RuntimeError: no backend"]
    assert not list((tmp_path / "student").glob("compression_*.png"))


def test_report_writes_missing_figures_beside_each_cells_student(tmp_path):
    """`slim report`'s pass over the store: a finished cell whose student has a compression report gets its figures
    once (a rerun keeps figures newer than the report); failed cells and cells without a student are skipped."""
    student = tmp_path / "student"
    student.mkdir()
    (student / REPORT_NAME).write_text(json.dumps(hand_report()))
    rows = [{"status": "done", "artifacts": {"student": str(student)}},
            {"status": "done", "artifacts": {"student": str(student)}},  # a second seed's cell on the same student
            {"status": "failed", "artifacts": {"student": str(tmp_path / "other")}},
            {"status": "done", "artifacts": {"run_dir": str(tmp_path)}}]
    assert write_cell_figures(rows) == [student]
    written = {path.name: path.stat().st_mtime_ns for path in student.glob("compression_*.p[nd][gf]")}
    assert sorted(written) == sorted(f"{name}.{suffix}" for name in PLOTS for suffix in ("png", "pdf"))
    assert write_cell_figures(rows) == [student]
    assert {path.name: path.stat().st_mtime_ns for path in student.glob("compression_*.p[nd][gf]")} == written
