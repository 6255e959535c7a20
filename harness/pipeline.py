"""`slim run recipe.yaml`: calibrate -> compress -> (scratch re-init) -> distill -> save, one-shot or progressive.

A progressive plan (`compress.plan`) repeats compress -> distill per stage (slim.harness.progressive). A rerun
of a killed run skips finished stages, reuses a stage's compressed student when its recipe is unchanged
and resumes the interrupted distillation from its last checkpoint.

Under torchrun or srun (one process per device, checked against train.devices x train.num_nodes) every rank runs
this function: they join one process group first, calibrate their share of the batches together, wait while
rank 0 alone compresses, re-initializes the scratch twin and writes summaries, and read the student from disk
for distillation, which Lightning runs on that same group.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from slim.harness.atomic import write_text_atomic
from slim.harness.compression.compress import compress
from slim.harness.compression.lineage import REPORT_NAME
from slim.harness.compression.recipe import validate_recipe
from slim.harness.compression.scratch import write_scratch_student
from slim.harness.config.schema import SlimConfig
from slim.harness.data.packing import check_data
from slim.harness.distributed import check_launch, init_distributed, on_rank_zero, uses_cuda
from slim.harness.errors import UserError
from slim.harness.models.io import read_model_config
from slim.harness.outputs import check_output_dir, weights_bytes
from slim.harness.progressive import StagePlan, plan_stages
from slim.harness.provenance import stamped, unstamped
from slim.harness.training.distill import SUMMARY_NAME, distill, validate_distill_config
from slim.harness.training.run import check_run_dir


def _json(value: object) -> object:
    return json.loads(json.dumps(value))


def _reusable_report(cfg: SlimConfig) -> dict | None:
    """The stage's compression report when its student directory was written by the same recipe (and resuming)."""
    report_file = Path(cfg.compress.output) / REPORT_NAME
    if cfg.train.resume and report_file.is_file():
        report = json.loads(report_file.read_text())
        if report["recipe"] == _json(asdict(cfg.compress)):
            return report
    return None


def _compressed(cfg: SlimConfig) -> dict:
    """The stage's compression report: reused (rank 0 decides for all) or from compressing now."""
    return on_rank_zero(lambda: _reusable_report(cfg)) or compress(cfg)


def _finished(stage: StagePlan) -> dict | None:
    summary_file = Path(stage.run_dir) / f"{SUMMARY_NAME}.json"
    if not summary_file.is_file():
        return None
    summary = unstamped(json.loads(summary_file.read_text()))
    return summary if summary["steps"] == stage.steps and (Path(stage.distilled) / "config.json").is_file() else None


def _scratch_dir(compressed: str | Path) -> Path:
    """Where distill.init=scratch writes the random-init twin of the compressed student."""
    return Path(compressed).with_name(f"{Path(compressed).name}-scratch")


def _stage_config(cfg: SlimConfig, stage: StagePlan) -> SlimConfig:
    """The full config of one stage's compress and distill runs (its recipe, run_dir, output, budget, student)."""
    stage_cfg = copy.deepcopy(cfg)
    stage_cfg.compress = stage.recipe
    stage_cfg.run_dir, stage_cfg.distill.output, stage_cfg.train.max_steps = stage.run_dir, stage.distilled, stage.steps
    student = Path(stage.recipe.output)
    stage_cfg.distill.student = str(_scratch_dir(student) if cfg.distill.init == "scratch" else student)
    return stage_cfg


def _check_stage(stage_cfg: SlimConfig, teacher_bytes: int) -> None:
    """Before any stage runs: its run_dir holds no other run and every directory it writes may be (re)placed."""
    check_run_dir(stage_cfg)
    for student in {stage_cfg.compress.output, stage_cfg.distill.student}:  # the scratch twin with init=scratch
        check_output_dir(student, "compress.output", teacher_bytes)
    check_output_dir(stage_cfg.distill.output, "distill.output", teacher_bytes)


def _run_stage(cfg: SlimConfig, stage_cfg: SlimConfig, stage: StagePlan, callbacks: Sequence[Callback]) -> dict:
    """Compress (or reuse) and distill one stage; a stage already distilled for its budget is skipped."""
    report = _compressed(stage_cfg)
    if cfg.distill.init == "scratch":
        on_rank_zero(lambda: write_scratch_student(stage.recipe.output, stage_cfg.distill.student, cfg.train.seed))
    finished = on_rank_zero(lambda: _finished(stage)) if cfg.train.resume else None
    summary = finished or asdict(distill(stage_cfg, stage.step_offset, cfg.train.max_steps, callbacks))
    return {"stage": stage.index, "shape": asdict(stage.shape), "steps": stage.steps, "step_offset": stage.step_offset,
            "params": report["params"], "distill": summary}


def run_recipe(cfg: SlimConfig, callbacks: Sequence[Callback] = ()) -> dict:
    """Run the recipe's plan; the final student (or, with distill.init=scratch, its random-init twin trained the
    same way) ends in `distill.output`. Returns and writes `<run_dir>/run_summary.json`. `callbacks` join every
    stage's trainer (e.g. search pruning)."""
    validate_distill_config(cfg)
    check_launch(cfg.train.devices, cfg.train.num_nodes)
    teacher = read_model_config(cfg.compress.teacher, "compress.teacher")
    validate_recipe(cfg.compress, teacher)
    check_data(cfg.data)
    stages = plan_stages(cfg, teacher)
    if cfg.distill.init == "scratch" and len(stages) > 1:
        raise UserError(f"distill.init: scratch trains the final architecture from random init, so it needs "
                        f"compress.plan=one_shot, got {cfg.compress.plan!r}")
    cfg.distill.teacher = cfg.compress.teacher
    stage_cfgs = [_stage_config(cfg, stage) for stage in stages]
    for stage_cfg in stage_cfgs:
        _check_stage(stage_cfg, weights_bytes(cfg.compress.teacher))
    init_distributed(cuda=uses_cuda(cfg.train.accelerator))
    records = [_run_stage(cfg, stage_cfg, stage, callbacks)
               for stage_cfg, stage in zip(stage_cfgs, stages, strict=True)]
    summary = {
        "init": cfg.distill.init,
        "plan": cfg.compress.plan,
        "params": {"teacher": records[0]["params"]["teacher"], "student": records[-1]["params"]["student"]},
        "stages": records,
        "distill": records[-1]["distill"],
        "experts_implementation": records[-1]["distill"].get("experts_implementation"),
    }
    on_rank_zero(lambda: write_text_atomic(Path(cfg.run_dir) / "run_summary.json",
                                           json.dumps(stamped(summary), indent=2)))
    return summary
