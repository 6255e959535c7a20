"""`slim distill`: train a compressed student against its frozen teacher and write the distilled HF directory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from transformers import PretrainedConfig

from slim.harness.compression.lineage import REPORT_NAME
from slim.harness.config.schema import DistillConfig, SlimConfig, TrainConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.errors import UserError
from slim.harness.evaluation.perplexity import model_perplexity
from slim.harness.evaluation.teacher_metrics import teacher_perplexity
from slim.harness.models.io import empty_model, read_model_config, save_pretrained, tokenizer_vocab
from slim.harness.models.mtp import MTPModule, config_mtp_depth
from slim.harness.models.mtp_io import save_mtp
from slim.harness.models.params import count_parameters
from slim.harness.outputs import check_output_dir, check_work_dir, weights_bytes
from slim.harness.tracking.wandb_logger import finish_runs, validate_tracking_config, wandb_loggers
from slim.harness.training.distill_module import DistillModule, load_student
from slim.harness.training.fsdp import gather_unsharded
from slim.harness.training.loss_mixes import loss_mixes
from slim.harness.training.router_kd import student_lineage
from slim.harness.training.run import (
    ExpertsPolicy,
    check_run_dir,
    fit,
    prepare_run,
    validate_train_config,
    write_summary,
)
from slim.harness.training.teacher_cache import check_cache_config, check_cache_data
from slim.harness.training.trainer import CHECKPOINT_BYTES_PER_PARAM
from slim.harness.training.weight_schedules import weight_schedules
from slim.harness.verbosity import note
from slim.kernels.kd_loss.fused_head import head_implementations

# Builds the Lightning module of one run: (distill_cfg, train_cfg, step_offset, total_steps) -> DistillModule.
ModuleFactory = Callable[[DistillConfig, TrainConfig, int, int | None], DistillModule]

STUDENT_INITS = ("pruned", "scratch")
SUMMARY_NAME = "distill_summary"  # <run_dir>/distill_summary.json


# What distillation logs per step into the run's metrics CSVs: every loss term a mix may use, the loss over the
# global batch, schedules, gradient norm, throughput and validation. A report's curve may plot these (a grid cell
# kind declares them); tests/test_grid.py checks a real run's CSV columns against this list.
DISTILL_CURVES = ("train/loss", "train/global_loss", "train/lm", "train/kd", "train/mtp_lm", "train/mtp_kd",
                  "train/balance", "train/router_kd", "train/lambda", "train/beta", "train/lr", "train/grad_norm",
                  "train/tokens_per_sec", "val/loss", "val/ppl", "val/kd")

@dataclass
class DistillSummary:
    """What `slim distill` reports and writes to `<run_dir>/distill_summary.json`."""

    output_dir: str
    val_perplexity: float
    teacher_val_perplexity: float
    steps: int
    tokens_seen: int  # over the whole run, resumed steps included
    wall_seconds: float  # of this process's training
    tokens_per_second: float  # tokens trained by this process / its wall_seconds (a resume's earlier steps excluded)
    final_lambda: float
    final_beta: float
    experts_implementation: str  # model_runtime.experts_implementation as resolved for the training device


def _finished_summary(run_dir: Path) -> DistillSummary | None:
    """The summary a finished run wrote, when this rerun trained no step: its times and throughput are the ones of
    the run that did the work, so it is returned as written and the file is left alone (None: no summary yet)."""
    path = run_dir / f"{SUMMARY_NAME}.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    note(f"{run_dir}: already trained to step {stored['steps']}; {path} is that run's and stays as it was")
    return DistillSummary(**{spec.name: stored[spec.name] for spec in fields(DistillSummary)})


def validate_distill_config(cfg: SlimConfig, total_steps: int | None = None) -> None:
    """Registry keys of `distill` and the trainer fields, before anything is loaded (the weights' ranges are
    checked when the config loads)."""
    d = cfg.distill
    loss_mixes.validate(d.loss, "distill.loss")
    weight_schedules.validate(d.lambda_schedule, "distill.lambda_schedule")
    weight_schedules.validate(d.beta_schedule, "distill.beta_schedule")
    head_implementations.validate(d.kd_kernel, "distill.kd_kernel")
    if d.init not in STUDENT_INITS:
        raise UserError(f"distill.init: unknown {d.init!r}; valid: {', '.join(STUDENT_INITS)}")
    if d.teacher_cache:
        check_cache_config(cfg)
    validate_train_config(cfg.train, total_steps)
    validate_tracking_config(cfg.tracking)


def validate_pair(student_dir: str, teacher_dir: str) -> PretrainedConfig:
    """Refuse a student whose vocabulary (config.vocab_size or tokenizer) differs from the teacher's:
    KD compares the two distributions token id by token id. Returns the student's config."""
    student, teacher = (read_model_config(student_dir, "distill.student"),
                        read_model_config(teacher_dir, "distill.teacher"))
    if student.vocab_size != teacher.vocab_size:
        raise UserError(f"distill.student: vocab_size {student.vocab_size} differs from the teacher's "
                        f"{teacher.vocab_size} ({teacher_dir}); KD needs one vocabulary")
    if tokenizer_vocab(student_dir, "distill.student") != tokenizer_vocab(teacher_dir, "distill.teacher"):
        raise UserError(f"distill.student: the tokenizer in {student_dir} differs from the teacher's in {teacher_dir}; "
                        "KD needs one vocabulary")
    return student


def _check_student_mtp(cfg: SlimConfig, student: PretrainedConfig) -> None:
    if loss_mixes.get(cfg.distill.loss).needs_mtp and not config_mtp_depth(student):
        raise UserError(f"distill.loss: {cfg.distill.loss!r} has MTP terms but the student {cfg.distill.student} has "
                        "no MTP depth (mtp_num_hidden_layers=0); pick a mix without mtp terms (lm, kd, kd+lm)")


def _check_data_tokenizer(cfg: SlimConfig, data: CorpusDataModule) -> None:
    if data.tokenizer.get_vocab() != tokenizer_vocab(cfg.distill.teacher, "distill.teacher"):
        raise UserError(f"data.tokenizer: the tokenizer at {cfg.data.tokenizer} differs from the teacher's "
                        f"({cfg.distill.teacher}); the corpus must be tokenized the way the teacher was trained")


def check_distill_outputs(cfg: SlimConfig) -> None:
    """run_dir (another run's config included) and distill.output, before any work: the output must be new,
    empty or harness-made and have room for the student, run_dir room for its checkpoints."""
    check_run_dir(cfg)
    check_output_dir(cfg.distill.output, "distill.output", weights_bytes(cfg.distill.student))
    student_params = count_parameters(empty_model(cfg.distill.student)).total
    check_work_dir(cfg.run_dir, "run_dir", CHECKPOINT_BYTES_PER_PARAM * student_params)


def _save_student_extras(student_mtp: MTPModule | None, student_dir: str, directory: Path) -> None:
    """The MTP weights, and the compression report (with its lineage) the distilled student still answers to."""
    if student_mtp is not None:
        save_mtp(student_mtp, directory)
    report = Path(student_dir) / REPORT_NAME
    if report.is_file():
        shutil.copyfile(report, directory / REPORT_NAME)


def distill(cfg: SlimConfig, step_offset: int = 0, total_steps: int | None = None,
            callbacks: Sequence[Callback] = (), module_factory: ModuleFactory = DistillModule) -> DistillSummary:
    """Distill `distill.student` from `distill.teacher` on the corpus; resumes from
    `<run_dir>/checkpoints/last.ckpt` when present. A progressive plan's stage passes the steps of the
    earlier stages (`step_offset`) and the whole budget (`total_steps`): LR, λ/β and the batch stream
    then continue where the previous stage stopped. `callbacks` join the trainer's (e.g. search pruning).
    `module_factory(distill_cfg, train_cfg, step_offset, total_steps)` builds the Lightning module (a
    DistillModule subclass for methods that change what is trained, e.g. the MoE adaptations in methods/adaptations)."""
    validate_distill_config(cfg, total_steps)
    _check_student_mtp(cfg, validate_pair(cfg.distill.student, cfg.distill.teacher))
    check_distill_outputs(cfg)
    if cfg.distill.router_kd_weight > 0:
        student_lineage(cfg.distill.student, cfg.distill.teacher)
    data = CorpusDataModule(cfg.data, cfg.train.batch_size, seed=cfg.train.seed, step_offset=step_offset)
    data.setup("fit")
    _check_data_tokenizer(cfg, data)
    if cfg.distill.teacher_cache:
        check_cache_data(cfg.distill.teacher_cache, data.data.train, data.tokenizer)
    run_dir = prepare_run(cfg)
    module = module_factory(cfg.distill, cfg.train, step_offset, total_steps)
    experts = ExpertsPolicy(cfg.model_runtime.experts_implementation,
                            frozen=lambda trained: (trained.teacher.model, trained.teacher.mtp))
    loggers = wandb_loggers(cfg)
    result = fit(module, data, cfg.train, run_dir, loggers=loggers, callbacks=[*callbacks, experts])
    trainer = result.trainer

    gathered = gather_unsharded((module.student, module.student_mtp),
                                lambda: load_student(cfg.distill.student, cfg.train.seed))
    if gathered is not None:  # under FSDP only rank 0 holds the gathered student and writes it
        student, student_mtp = gathered
        save_pretrained(student, cfg.distill.output, tokenizer=data.tokenizer,
                        extras=lambda directory: _save_student_extras(student_mtp, cfg.distill.student, directory))
    if result.start_step == trainer.global_step and (finished := _finished_summary(run_dir)) is not None:
        return finished
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    final_lambda, final_beta = module.loss_weights()
    summary = DistillSummary(
        output_dir=cfg.distill.output,
        val_perplexity=model_perplexity(module.student, data.val_dataloader(), desc="student validation perplexity"),
        teacher_val_perplexity=teacher_perplexity(cfg.distill.teacher, module.teacher.model, data.val_dataloader(),
                                                  broadcast=trainer.strategy.broadcast),
        steps=trainer.global_step,
        tokens_seen=trainer.global_step * tokens_per_step,
        wall_seconds=round(result.wall_seconds, 1),
        tokens_per_second=result.tokens_per_second(tokens_per_step),
        final_lambda=final_lambda,
        final_beta=final_beta,
        experts_implementation=experts.implementation,
    )
    finish_runs(loggers, {"val_perplexity": summary.val_perplexity,
                          "teacher_val_perplexity": summary.teacher_val_perplexity})
    if trainer.is_global_zero:
        write_summary(run_dir, SUMMARY_NAME, summary)
    trainer.strategy.barrier()
    return summary
