"""`slim adapt zeda`: inject zero experts into the original MoE, then two-stage self-distillation from it.

The stage split is ours (the paper names two stages, not their lengths): the first
round(zeda.router_share × train.max_steps) steps train only the routers with the backbone frozen (default 30%),
the remaining steps train the whole model. Each stage is one `slim.harness.training.distill` run with the original
model as the frozen teacher; the second continues the first's LR schedule and batch stream (step_offset), as
the stages of a progressive plan do. A stage finished for its budget is skipped on rerun, an interrupted one
resumes from its checkpoint. Results go to `<run_dir>/zeda_summary.json`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from slim.harness.config.schema import DistillConfig, SlimConfig, TrainConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.errors import UserError
from slim.harness.models.expert_flops import expert_flops_saved
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.io import load_pretrained, read_model_config, save_pretrained
from slim.harness.models.mtp_io import find_mtp, save_mtp
from slim.harness.outputs import check_output_dir, check_work_dir, weights_bytes
from slim.harness.provenance import stamped, unstamped
from slim.harness.training.distill import SUMMARY_NAME as DISTILL_SUMMARY
from slim.harness.training.distill import distill, validate_distill_config
from slim.harness.training.run import check_run_dir
from slim.methods.zeda.inject import check_injection, inject_zero_experts
from slim.methods.zeda.module import ZedaDistillModule
from slim.methods.zeda.options import ZedaConfig

SUMMARY_NAME = "zeda_summary.json"


@dataclass(frozen=True)
class ZedaStage:
    """One stage: "router" (routers only) or "all" (whole model), its steps and the steps before it."""

    name: str
    steps: int
    step_offset: int


def plan_stages(max_steps: int, router_share: float) -> list[ZedaStage]:
    """The two stages of a `max_steps` budget; a stage that gets no steps is left out."""
    router_steps = round(max_steps * router_share)
    stages = [ZedaStage("router", router_steps, 0), ZedaStage("all", max_steps - router_steps, router_steps)]
    return [stage for stage in stages if stage.steps > 0]


def adapted_dir(cfg: SlimConfig) -> Path:
    """Where the adapted model goes: `zeda.output`, or `<run_dir>/model` when empty (one per grid cell)."""
    return Path(cfg.zeda.output or Path(cfg.run_dir) / "model")


def injected_dir(cfg: SlimConfig) -> Path:
    """Where the original model with zero experts injected goes: the first stage's student."""
    return Path(cfg.run_dir) / "injected"


def _distill_view(cfg: SlimConfig) -> SlimConfig:
    """`cfg` with the distill fields ZEDA sets: the original model as teacher and the `zeda.loss` mix."""
    staged = copy.deepcopy(cfg)
    staged.distill.teacher, staged.distill.loss = cfg.zeda.teacher, cfg.zeda.loss
    return staged


def validate_zeda(cfg: SlimConfig) -> None:
    """Every `zeda.*` field and the distillation/trainer fields the stages use, before any model is loaded."""
    zeda = cfg.zeda
    check_injection(zeda, read_model_config(zeda.teacher, "zeda.teacher"))
    if zeda.balance_weight < 0:
        raise UserError(f"zeda.balance_weight: must be >= 0, got {zeda.balance_weight}")
    if not 0 <= zeda.router_share <= 1:
        raise UserError(f"zeda.router_share: must be in [0, 1], got {zeda.router_share}")
    if cfg.distill.router_kd_weight:
        raise UserError(f"distill.router_kd_weight: must be 0 under slim adapt zeda (the student's routers have "
                        f"{zeda.num_zero_experts} more columns than the teacher's), got {cfg.distill.router_kd_weight}")
    validate_distill_config(_distill_view(cfg))


def write_injected(cfg: ZedaConfig, out_dir: Path) -> Path:
    """The original model with zero experts injected, its tokenizer and MTP weights, as an HF directory."""
    model, tokenizer = load_pretrained(cfg.teacher)
    mtp = find_mtp(model, cfg.teacher)
    inject_zero_experts(model, cfg)
    extras = (lambda directory: save_mtp(mtp, directory)) if mtp is not None else None
    return save_pretrained(model, out_dir, tokenizer=tokenizer, extras=extras)


def _finished(run_dir: Path, output: Path, steps: int) -> dict | None:
    summary_file = run_dir / f"{DISTILL_SUMMARY}.json"
    if not summary_file.is_file() or not (output / "config.json").is_file():
        return None
    summary = unstamped(json.loads(summary_file.read_text()))
    return summary if summary["steps"] == steps else None


def _stage_configs(cfg: SlimConfig, stages: list[ZedaStage]) -> list[SlimConfig]:
    """Each stage's distill config: its run_dir, budget, the student it starts from (the injected model, then the
    previous stage's output) and its output (the last one: `adapted_dir`)."""
    configs, student = [], injected_dir(cfg)
    for index, stage in enumerate(stages):
        stage_cfg = _distill_view(cfg)
        stage_cfg.run_dir = str(Path(cfg.run_dir) / f"stage-{stage.name}")
        output = adapted_dir(cfg) if index == len(stages) - 1 else Path(stage_cfg.run_dir) / "model"
        stage_cfg.distill.student, stage_cfg.distill.output = str(student), str(output)
        stage_cfg.train.max_steps = stage.steps
        configs.append(stage_cfg)
        student = output
    return configs


def _check_outputs(cfg: SlimConfig, stage_cfgs: list[SlimConfig]) -> None:
    """Before any work: run_dir and every stage's run_dir hold no other run, every model directory may be
    (re)placed and has room for the model."""
    model_bytes = weights_bytes(cfg.zeda.teacher)
    check_work_dir(cfg.run_dir, "run_dir")
    check_output_dir(injected_dir(cfg), "run_dir", model_bytes)
    for stage_cfg in stage_cfgs:
        check_run_dir(stage_cfg)
        field = "zeda.output" if cfg.zeda.output and stage_cfg is stage_cfgs[-1] else "run_dir"
        check_output_dir(stage_cfg.distill.output, field, model_bytes)


def _run_stage(cfg: SlimConfig, stage: ZedaStage, stage_cfg: SlimConfig) -> dict:
    """Distill one stage (or reuse a finished one)."""

    def module(distill_cfg: DistillConfig, train_cfg: TrainConfig, step_offset: int,
               total_steps: int | None) -> ZedaDistillModule:
        return ZedaDistillModule(distill_cfg, train_cfg, cfg.zeda, stage.name, step_offset, total_steps)

    summary = (_finished(Path(stage_cfg.run_dir), Path(stage_cfg.distill.output), stage.steps)
               or asdict(distill(stage_cfg, stage.step_offset, cfg.train.max_steps, module_factory=module)))
    return {"stage": stage.name, "steps": stage.steps, "step_offset": stage.step_offset, "distill": summary}


def run_zeda(cfg: SlimConfig) -> dict:
    """Inject, adapt in two stages, measure; the adapted model ends in `adapted_dir(cfg)`. Returns the summary
    (validation perplexity of the original and the adapted model, share of expert FLOPs skipped on the
    validation split overall and per layer) and writes it to `<run_dir>/zeda_summary.json`."""
    validate_zeda(cfg)
    stages = plan_stages(cfg.train.max_steps, cfg.zeda.router_share)
    stage_cfgs = _stage_configs(cfg, stages)
    _check_outputs(cfg, stage_cfgs)
    write_injected(cfg.zeda, injected_dir(cfg))
    records = [_run_stage(cfg, stage, stage_cfg) for stage, stage_cfg in zip(stages, stage_cfgs, strict=True)]
    model, _ = load_pretrained(adapted_dir(cfg))
    apply_experts_policy(cfg.model_runtime.experts_implementation, model)
    data = CorpusDataModule(cfg.data, cfg.train.batch_size, seed=cfg.train.seed)
    data.setup("fit")
    flops = expert_flops_saved(model, data.val_dataloader())
    final = records[-1]["distill"]
    summary = {
        "output_dir": str(adapted_dir(cfg)),
        "num_zero_experts": cfg.zeda.num_zero_experts,
        "group_size": cfg.zeda.group_size,
        "balance_weight": cfg.zeda.balance_weight,
        "router_share": cfg.zeda.router_share,
        "val_perplexity": final["val_perplexity"],
        "teacher_val_perplexity": final["teacher_val_perplexity"],
        "expert_flops_saved": flops["overall"],
        "expert_flops_saved_per_layer": flops["per_layer"],
        "steps": sum(record["steps"] for record in records),
        "experts_implementation": final.get("experts_implementation"),
        "wall_seconds": round(sum(record["distill"]["wall_seconds"] for record in records), 1),
        "stages": records,
    }
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run_dir) / SUMMARY_NAME).write_text(json.dumps(stamped(summary), indent=2))
    return summary
