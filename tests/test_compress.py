"""`slim compress` end to end on a tiny teacher: recipe validation, identities, every method combination."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from slim.harness.calibration.io import save_stats
from slim.harness.calibration.run import run_calibration
from slim.harness.compression.compress import compress
from slim.harness.compression.lineage import REPORT_NAME
from slim.harness.config.load import load_config
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained
from slim.harness.models.mtp import run_mtp
from slim.harness.models.mtp_io import load_mtp
from slim.harness.models.params import count_parameters
from tests.fixtures.compress_teacher import recipe


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))


def test_keep_everything_is_the_identity(teacher, tmp_path):
    """A recipe that keeps all layers, dims and experts writes a student with the teacher's logits."""
    compress(recipe(teacher, tmp_path))
    student, _ = load_pretrained(tmp_path / "student")
    original, _ = load_pretrained(teacher[0])
    assert torch.equal(logits(student, IDS), logits(original, IDS))
    assert torch.equal(mtp_logits(student, tmp_path / "student"), mtp_logits(original, teacher[0]))


def mtp_logits(model, directory: Path) -> torch.Tensor:
    """Depth-1 MTP logits of `model` with the MTP module saved in `directory`."""
    with torch.no_grad():
        hidden = model.model(input_ids=IDS, use_cache=False).last_hidden_state
        return run_mtp(model, load_mtp(model, directory), hidden, IDS)[0]


def test_slimqwen_shape_recipe_writes_reloadable_student_and_report(teacher, tmp_path):
    """Depth, width and experts cut together: the student reloads, and the report's counts match it."""
    report = compress(recipe(teacher, tmp_path, "compress.depth.num_drop=1", "compress.width.hidden_size=48",
                             "compress.experts.num_experts=4", "compress.experts.top_k=1",
                             "compress.experts.reducer=partial_preserve"))
    student, tokenizer = load_pretrained(tmp_path / "student")
    assert tokenizer is not None
    assert (student.config.num_hidden_layers, student.config.hidden_size, student.config.num_experts,
            student.config.num_experts_per_tok) == (3, 48, 4, 1)
    on_disk = json.loads((tmp_path / "student" / REPORT_NAME).read_text())
    assert (on_disk["params"]["student"]["total"] == count_parameters(student).total
            == report["params"]["student"]["total"])
    assert on_disk["kept_layers"] == [0, 1, 2] and len(on_disk["kept_dims"]) == 48
    for layer in on_disk["experts"].values():
        assert layer["kept"] == 4 and sorted(int(k) for k in layer["merge_map"]) == list(range(8))
    assert torch.isfinite(logits(student, IDS)).all()
    mtp = load_mtp(student, tmp_path / "student")
    assert mtp.layers[0].block.mlp.experts.gate_up_proj.shape == (4, 64, 48)  # experts halved, width cut
    assert torch.isfinite(mtp_logits(student, tmp_path / "student")).all()


def test_a_cut_that_drops_every_attention_layer_is_refused_unless_allowed(teacher, tmp_path):
    """last_n dropping layers 1-3 removes both full-attention layers: refused in one line naming the field and
    nothing written; with compress.depth.allow_no_attention=true the linear-attention-only student is written."""
    with pytest.raises(UserError, match=r"^compress.depth: selector 'last_n' with num_drop=3 drops every "
                                        r"full-attention layer \[1, 3\] of this hybrid model"):
        compress(recipe(teacher, tmp_path, "compress.depth.num_drop=3"))
    assert not (tmp_path / "student").exists()
    compress(recipe(teacher, tmp_path, "compress.depth.num_drop=3", "compress.depth.allow_no_attention=true"))
    student, _ = load_pretrained(tmp_path / "student")
    assert student.config.layer_types == ["linear_attention"]
    assert torch.isfinite(logits(student, IDS)).all()


def test_global_budget_keeps_different_counts_per_layer(teacher, tmp_path):
    """Under the global budget the layers keep different numbers of experts summing to the target."""
    report = compress(recipe(teacher, tmp_path, "compress.experts.num_experts=4", "compress.experts.budget=global",
                             "compress.experts.min_per_layer=2", "compress.experts.criterion=freq"))
    counts = [layer["kept"] for layer in report["experts"].values()]
    assert sum(counts) == 4 * 4 and min(counts) >= 2
    student, _ = load_pretrained(tmp_path / "student")
    assert torch.isfinite(logits(student, IDS)).all()


@pytest.mark.parametrize(("reducer", "criterion"), list(itertools.product(
    ["prune", "merge", "partial_preserve"], ["freq", "soft", "reap", "ean", "weight_norm"])))
def test_every_reducer_and_criterion_gives_a_working_student(teacher, tmp_path, reducer, criterion):
    """Each reducer x criterion halves the experts and yields a student with finite logits."""
    compress(recipe(teacher, tmp_path, "compress.experts.num_experts=4", f"compress.experts.reducer={reducer}",
                    f"compress.experts.criterion={criterion}"))
    student, _ = load_pretrained(tmp_path / "student")
    assert student.config.num_experts == 4 and torch.isfinite(logits(student, IDS)).all()


@pytest.mark.parametrize(("override", "needle"), [
    ("compress.experts.num_experts=8", "compress.experts.num_experts: 8 must be smaller than the teacher's 8"),
    ("compress.experts.top_k=9", "compress.experts.top_k: 9 must be in 1..8"),
    ("compress.width.hidden_size=80", "compress.width.hidden_size: 80 out of range"),
    ("compress.width.hidden_size=36", "multiple of 8"),
    ("compress.depth.num_drop=4", "compress.depth.num_drop: 4 out of range; allowed 0..3"),
    ("compress.experts.reducer=prnue", "compress.experts.reducer: unknown expert reducer 'prnue'"),
    ("compress.depth.selector=first_n", "valid: act_sim, block_influence, last_n"),
    ("compress.experts.intact_ratio=1.5", "compress.experts.intact_ratio: must be in [0, 1)"),
])
def test_bad_recipe_is_refused_before_any_work(teacher, tmp_path, override, needle):
    """Each bad field is one line naming it and the allowed values; no student directory appears."""
    with pytest.raises(UserError) as err:
        compress(recipe(teacher, tmp_path, override))
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "student").exists()


def test_top_k_above_target_experts_is_refused(teacher, tmp_path):
    """The student's top-k cannot exceed the experts it keeps."""
    with pytest.raises(UserError, match="compress.experts.top_k: 3 must be in 1..2"):
        compress(recipe(teacher, tmp_path, "compress.experts.num_experts=2", "compress.experts.top_k=3"))


def test_stats_of_another_model_are_refused(teacher, tmp_path):
    """Statistics whose fingerprint does not match the teacher fail with one line naming the file."""
    teacher_dir, _, base = teacher
    cfg = load_config(base)
    other = build_model(cfg.model, seed=1)
    foreign = tmp_path / "foreign.safetensors"
    save_stats(run_calibration(other, cfg.data, cfg.calibration), foreign)
    with pytest.raises(UserError, match="fingerprint"):
        compress(recipe(teacher, tmp_path, f"compress.stats={foreign}", "compress.experts.num_experts=4"))


def test_missing_teacher_directory(tmp_path, teacher):
    """A teacher path without config.json is one clear line."""
    with pytest.raises(UserError, match="compress.teacher: no Hugging Face model directory"):
        compress(recipe(teacher, tmp_path, f"compress.teacher={tmp_path / 'nope'}"))


def test_cut_is_surgery_in_memory_and_matches_compress(teacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The cut half alone, on a teacher and statistics already in memory, writes no file and gives the report
    compress() wrote (the split into statistics and cut changes nothing)."""
    from slim.harness.calibration.io import load_stats
    from slim.harness.compression.compress import source_lineage
    from slim.harness.compression.cut import cut
    from slim.harness.models.mtp_io import find_mtp
    from slim.harness.models.view import view

    cfg = recipe(teacher, tmp_path, "compress.experts.num_experts=4", "compress.depth.num_drop=1",
                 "compress.width.hidden_size=48")
    compress(cfg)
    written = json.loads((tmp_path / "student" / REPORT_NAME).read_text())
    model, _ = load_pretrained(teacher[0])
    stats, source, mtp = load_stats(teacher[1]), source_lineage(cfg.compress, view(model)), find_mtp(model, teacher[0])
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    files_before = sorted(tmp_path.rglob("*"))
    result = cut(cfg.compress, model.config, model, stats, source, mtp)
    assert sorted(tmp_path.rglob("*")) == files_before
    assert json.loads(json.dumps(result.report)) == written
    assert result.mtp is mtp and model.config.hidden_size == 48
