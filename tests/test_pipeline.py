"""`slim run`: calibrate -> compress -> distill in one call, from the pruned student or its scratch twin."""

from __future__ import annotations

import json

import pytest
import torch

from slim.harness.errors import UserError
from slim.harness.models.experts_policy import resolve_experts_implementation
from slim.harness.models.io import load_pretrained
from slim.harness.pipeline import run_recipe
from slim.harness.provenance import software
from tests.fixtures.compress_teacher import run_config

pytestmark = pytest.mark.e2e


def test_one_shot_run_writes_a_distilled_student(teacher, tmp_path):
    """The pipeline compresses, distills for the step budget and writes the student plus a summary."""
    summary = run_recipe(run_config(teacher, tmp_path))
    assert summary["distill"]["steps"] == 3 and summary["init"] == "pruned"
    distilled, _ = load_pretrained(tmp_path / "distilled")
    assert distilled.config.num_hidden_layers == 3 and distilled.config.num_experts == 4
    saved = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert saved["params"]["student"]["total"] < saved["params"]["teacher"]["total"]
    expected = resolve_experts_implementation("auto", "cpu", [torch.float32])  # model_runtime's default
    assert saved["experts_implementation"] == saved["distill"]["experts_implementation"] == expected
    distill_saved = json.loads((tmp_path / "run" / "distill_summary.json").read_text())
    assert saved["software"] == distill_saved["software"] == software()  # versions on every summary


def test_scratch_init_keeps_the_shape_and_redraws_every_weight(teacher, tmp_path):
    """distill.init=scratch trains the compressed architecture (same config) with every weight matrix redrawn."""
    run_recipe(run_config(teacher, tmp_path, "distill.init=scratch"))
    pruned, _ = load_pretrained(tmp_path / "student")
    scratch, _ = load_pretrained(tmp_path / "student-scratch")
    config = lambda model: {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert config(pruned) == config(scratch)
    for (name, a), (_, b) in zip(pruned.state_dict().items(), scratch.state_dict().items(), strict=True):
        assert a.shape == b.shape, name
        if a.ndim >= 2:  # every matrix is redrawn; 1-D norms / gates start from the family's constants
            assert not torch.equal(a, b), name
    assert (tmp_path / "distilled" / "config.json").is_file()


def test_unknown_init_is_refused_before_compressing(teacher, tmp_path):
    """A bad distill.init fails in one line before the student directory is written."""
    with pytest.raises(UserError, match="distill.init: unknown 'random'; valid: pruned, scratch"):
        run_recipe(run_config(teacher, tmp_path, "distill.init=random"))
    assert not (tmp_path / "student").exists()


@pytest.mark.slow
def test_rerun_with_another_recipe_in_the_same_run_dir_is_refused(teacher, tmp_path):
    """A finished run_dir is not silently reused for a different student: the rerun names the run_dir instead of
    returning the old summary (or resuming the old checkpoints); train.resume=false starts over there."""
    run_recipe(run_config(teacher, tmp_path))
    with pytest.raises(UserError, match=f"run_dir: {tmp_path / 'run'} holds a run with another config"):
        run_recipe(run_config(teacher, tmp_path, "distill.loss=kd"))
    summary = run_recipe(run_config(teacher, tmp_path, "distill.loss=kd", "train.resume=false"))
    assert summary["distill"]["steps"] == 3
