"""Progressive plans end to end: per-stage recipes and budgets, one continued schedule, restartable stages."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.errors import UserError
from slim.harness.models.io import load_pretrained, read_model_config
from slim.harness.pipeline import run_recipe
from slim.harness.progressive import plan_stages, stage_steps
from slim.harness.progressive_plans import Shape
from tests.fixtures.compress_teacher import run_config

pytestmark = pytest.mark.e2e

JOINT = ["compress.plan=joint", "compress.plan_first_share=0.5", "train.max_steps=4", "train.val_every=2",
         "compress.depth.num_drop=2", "compress.width.hidden_size=48", "compress.experts.num_experts=4"]


def test_joint_plan_stages_chain_recipes_and_budgets(teacher, tmp_path):
    """Stage 1 cuts half of depth and width from the teacher; stage 2 cuts the rest from stage 1's student,
    recalibrated (no stats file), with the experts; steps split by token share and offsets accumulate."""
    cfg = run_config(teacher, tmp_path, *JOINT)
    first, second = plan_stages(cfg, read_model_config(cfg.compress.teacher, "compress.teacher"))
    assert first.shape == Shape(3, 56, 8, 2) and second.shape == Shape(2, 48, 4, 2)
    assert (first.recipe.depth.num_drop, first.recipe.width.hidden_size, first.recipe.experts.num_experts) == (1, 56, 0)
    assert (second.recipe.depth.num_drop, second.recipe.width.hidden_size,
            second.recipe.experts.num_experts) == (1, 48, 4)
    assert first.recipe.teacher == cfg.compress.teacher and first.recipe.stats == cfg.compress.stats
    assert second.recipe.teacher == first.distilled and second.recipe.stats == ""
    assert (first.steps, first.step_offset, second.steps, second.step_offset) == (2, 0, 2, 2)
    assert second.recipe.output == cfg.compress.output and second.distilled == cfg.distill.output


def test_stage_steps_give_the_last_stage_the_remainder():
    assert stage_steps([0.1, 0.9], 25) == [2, 23]
    assert stage_steps([0.05, 0.05, 0.9], 100) == [5, 5, 90]
    with pytest.raises(UserError, match="train.max_steps: 5 steps cannot give every stage"):
        stage_steps([0.05, 0.05, 0.9], 5)


@pytest.mark.slow
def test_joint_run_distills_each_stage_from_the_original_teacher_and_resumes(teacher, tmp_path):
    """Two stages run, stage 2 continues at global step 2 against the ORIGINAL teacher, the final student has
    the target shape, and a rerun skips both finished stages."""
    cfg = run_config(teacher, tmp_path, *JOINT)
    summary = json.loads(json.dumps(run_recipe(cfg)))
    assert [stage["steps"] for stage in summary["stages"]] == [2, 2]
    assert [stage["step_offset"] for stage in summary["stages"]] == [0, 2]
    stage2_config = OmegaConf.load(tmp_path / "run" / "stage2" / "config.yaml")
    assert stage2_config.distill.teacher == str(teacher[0])
    assert stage2_config.distill.student == str(tmp_path / "student")
    final, _ = load_pretrained(tmp_path / "distilled")
    shape = (final.config.num_hidden_layers, final.config.hidden_size, final.config.num_experts)
    assert shape == (2, 48, 4)
    assert summary["stages"][0]["params"]["student"]["total"] > summary["params"]["student"]["total"]

    again = run_recipe(run_config(teacher, tmp_path, *JOINT))
    assert again["stages"] == summary["stages"]
    assert not any(Path(tmp_path / "run" / f"stage{i}" / "metrics" / "version_1").exists() for i in (1, 2))


def test_scratch_with_a_progressive_plan_is_refused(teacher, tmp_path):
    with pytest.raises(UserError, match="distill.init: scratch .* needs compress.plan=one_shot, got 'joint'"):
        run_recipe(run_config(teacher, tmp_path, *JOINT, "distill.init=scratch"))
    assert not (tmp_path / "student").exists()


def test_unknown_plan_lists_valid_plans(teacher, tmp_path):
    with pytest.raises(UserError, match="compress.plan.*depth_first"):
        run_recipe(run_config(teacher, tmp_path, "compress.plan=zigzag"))


def test_a_later_stage_continues_the_batch_stream(tiny_config):
    """With step_offset s, a stage's first batches are the uninterrupted stream's batches s, s+1, ..."""
    cfg = tiny_config()

    def batches(offset: int, steps: int) -> list[list[int]]:
        data = CorpusDataModule(cfg.data, batch_size=4, seed=0, step_offset=offset)
        data.setup("fit")
        data.trainer = SimpleNamespace(max_steps=steps, global_step=0, global_rank=0, world_size=1,
                                       accumulate_grad_batches=1)
        return [batch["input_ids"][:, 0].tolist() for batch in data.train_dataloader()]

    whole = batches(0, 5)
    assert batches(3, 2) == whole[3:]
