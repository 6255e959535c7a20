"""Turn a recipe + progressive plan into concrete stages: a compression recipe, a step budget and
directories for each stage (SlimQwen sec 3.3 / Table 5 / Appendix A.5).

Stage i compresses the previous stage's distilled student (stage 1: the teacher) to the plan's i-th
shape, recalibrating on the current model, then distills it from the ORIGINAL teacher for its share of
`train.max_steps`. Steps before the stage are its `step_offset`, so LR, λ/β and the data stream continue
one schedule over the whole budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from transformers import PretrainedConfig

from slim.harness.compression.modeling_slim import expert_count
from slim.harness.compression.recipe import student_top_k
from slim.harness.config.schema import CompressConfig, SlimConfig
from slim.harness.errors import UserError
from slim.harness.progressive_plans import Shape, plans


@dataclass
class StagePlan:
    """One stage: compress `source` with `recipe` into `recipe.output`, then distill it for `steps` steps
    starting at global step `step_offset`, writing the run to `run_dir` and the student to `distilled`."""

    index: int
    shape: Shape
    recipe: CompressConfig
    steps: int
    step_offset: int
    run_dir: str
    distilled: str


def model_shape(config: PretrainedConfig) -> Shape:
    return Shape(config.num_hidden_layers, config.hidden_size, expert_count(config), config.num_experts_per_tok)


def final_shape(recipe: CompressConfig, teacher: PretrainedConfig) -> Shape:
    """The recipe's target: its cuts applied to the teacher's shape (0 = keep the teacher's value)."""
    return Shape(
        num_layers=teacher.num_hidden_layers - recipe.depth.num_drop,
        hidden_size=recipe.width.hidden_size or teacher.hidden_size,
        num_experts=recipe.experts.num_experts or teacher.num_experts,
        top_k=student_top_k(recipe, teacher),
    )


def stage_recipe(recipe: CompressConfig, source: Shape, target: Shape) -> CompressConfig:
    """The recipe that compresses a `source`-shaped model to `target`, keeping the methods of `recipe`."""
    stage = copy.deepcopy(recipe)
    stage.depth.num_drop = source.num_layers - target.num_layers
    stage.width.hidden_size = target.hidden_size if target.hidden_size < source.hidden_size else 0
    stage.experts.num_experts = target.num_experts if target.num_experts < source.num_experts else 0
    stage.experts.top_k = target.top_k if target.top_k != source.top_k else 0
    return stage


def stage_steps(shares: list[float], max_steps: int) -> list[int]:
    """Steps per stage: round(share × budget) for all but the last stage, which gets the remainder."""
    early = [round(share * max_steps) for share in shares[:-1]]
    steps = [*early, max_steps - sum(early)]
    if min(steps) < 1:
        raise UserError(f"train.max_steps: {max_steps} steps cannot give every stage of the plan (token shares "
                        f"{', '.join(f'{share:g}' for share in shares)}) at least one step; raise train.max_steps")
    return steps


def plan_stages(cfg: SlimConfig, teacher: PretrainedConfig) -> list[StagePlan]:
    """The concrete stages of `cfg.compress.plan` from the teacher to the recipe's final shape."""
    recipe = cfg.compress
    if not 0 < recipe.plan_first_share < 1:
        raise UserError(f"compress.plan_first_share: must be in (0, 1), got {recipe.plan_first_share}")
    stages = plans.get(recipe.plan, "compress.plan")(model_shape(teacher), final_shape(recipe, teacher),
                                                     recipe.plan_first_share)
    steps = stage_steps([stage.token_share for stage in stages], cfg.train.max_steps)
    if len(stages) == 1:
        return [StagePlan(1, stages[0].shape, copy.deepcopy(recipe), steps[0], 0, cfg.run_dir, cfg.distill.output)]
    result: list[StagePlan] = []
    source, offset = model_shape(teacher), 0
    for index, (stage, count) in enumerate(zip(stages, steps, strict=True), start=1):
        last = index == len(stages)
        stage_dir = Path(cfg.run_dir) / f"stage{index}"
        compression = stage_recipe(recipe, source, stage.shape)
        compression.output = recipe.output if last else f"{recipe.output}-stage{index}"
        if result:  # later stages compress the previous stage's student, recalibrated on the fly
            compression.teacher, compression.stats = result[-1].distilled, ""
        result.append(StagePlan(index, stage.shape, compression, count, offset, str(stage_dir),
                                cfg.distill.output if last else str(stage_dir / "distilled")))
        source, offset = stage.shape, offset + count
    return result
