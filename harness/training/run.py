"""What every training command does around `Trainer.fit`: validate the trainer fields, prepare the run
directory (refusing one that holds another run), fit with resume from `last.ckpt`, and write the summary JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from slim.harness.atomic import write_text_atomic
from slim.harness.config.load import to_yaml
from slim.harness.config.schema import SlimConfig, TrainConfig
from slim.harness.errors import Interrupted, Preempted, UserError
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.outputs import check_work_dir
from slim.harness.provenance import stamped
from slim.harness.training.layer_switches import check_compiler
from slim.harness.training.nonfinite_guard import GoodCheckpoint
from slim.harness.training.preemption import StopAndCheckpoint, validate_checkpointing
from slim.harness.training.trainer import PRECISIONS, STRATEGIES, build_trainer, resume_path


def check_batch_split(cfg: TrainConfig, processes: int, processes_field: str) -> None:
    """The global batch splits into equal per-process slices, and each slice into equal micro-batches;
    `processes_field` names where the process count comes from."""
    if cfg.batch_size % processes:
        raise UserError(f"train.batch_size ({cfg.batch_size}) must be divisible by the number of processes "
                        f"({processes_field} = {processes}): each takes an equal slice of the batch")
    per_process = cfg.batch_size // processes
    if cfg.micro_batch_size < 0 or (cfg.micro_batch_size and per_process % cfg.micro_batch_size):
        raise UserError(f"train.micro_batch_size ({cfg.micro_batch_size}) must be 0 or divide each process's slice "
                        f"of the batch (train.batch_size / ({processes_field}) = {per_process})")


def validate_train_config(cfg: TrainConfig, total_steps: int | None = None) -> None:
    """Refuse step counts that cannot make a run, naming the `train.` field. `total_steps` is the whole
    budget when this run is one stage of a progressive plan (warmup happens once, in the first stage)."""
    budget = cfg.max_steps if total_steps is None else total_steps
    if cfg.warmup_steps >= budget:
        raise UserError(f"train.warmup_steps ({cfg.warmup_steps}) must be < train.max_steps ({budget}); a short run "
                        f"needs a shorter warmup too, e.g. train.warmup_steps={budget // 10}")
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"train.strategy: unknown {cfg.strategy!r}; valid: {', '.join(STRATEGIES)}")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"train.precision: unknown {cfg.precision!r}; valid: {', '.join(PRECISIONS)}")
    check_batch_split(cfg, cfg.devices * cfg.num_nodes, "train.devices x train.num_nodes")
    validate_checkpointing(cfg)
    if cfg.compile:
        check_compiler()


# What may change between launches of one run: where and how it computes, not what it trains. A requeued job may get
# another node or GPU count (the global batch stays train.batch_size, sliced anew, in the same (seed, step) order),
# another micro-batch split of it, recomputation, compilation, threads, logging and checkpoint cadence.
LAUNCH_FIELDS = ("max_steps", "resume", "devices", "num_nodes", "strategy", "micro_batch_size",
                 "activation_checkpointing", "compile", "num_threads", "log_every", "checkpoint_every_steps",
                 "checkpoint_every_minutes", "stop_signals")


def _comparable(yaml_text: str) -> dict:
    """A run config without the fields a rerun may change: its step budget (to extend it), train.resume, the launch
    (LAUNCH_FIELDS) and how the models compute (model_runtime: the same model either way)."""
    config = OmegaConf.to_container(OmegaConf.create(yaml_text))
    for name in LAUNCH_FIELDS:
        config["train"].pop(name, None)
    config.pop("model_runtime", None)
    return config


def _differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (a key on one side only counts)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip(".")]
    return [key for name in sorted(old.keys() | new.keys())
            for key in _differing_keys(old.get(name), new.get(name), f"{prefix}{name}.")]


def check_run_dir(cfg: SlimConfig) -> None:
    """Refuse a run_dir that is a file or unwritable, and, with train.resume, one holding a run of another config
    (recipe, loss, LR, data, ...): its checkpoints and summary belong to a different model; or a sharded (FSDP)
    checkpoint this strategy cannot read. Cheap; every training entry point calls it before any work, `prepare_run`
    again before config.yaml is written."""
    check_work_dir(cfg.run_dir, "run_dir")
    saved = Path(cfg.run_dir) / "config.yaml"
    if cfg.train.resume and saved.is_file():
        differing = _differing_keys(_comparable(saved.read_text()), _comparable(to_yaml(cfg)))
        if differing:
            shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
            raise UserError(f"run_dir: {cfg.run_dir} holds a run with another config ({saved}: {shown} differ); "
                            "pick a new run_dir or set train.resume=false to start over there")
    last = resume_path(cfg.run_dir, cfg.train)
    if last is not None and Path(last).is_dir() and cfg.train.strategy != "fsdp":
        raise UserError(f"train.strategy: {last} is a sharded FSDP checkpoint, which only train.strategy=fsdp "
                        "resumes (on any train.devices x train.num_nodes, 1 included); or set train.resume=false")


def prepare_run(cfg: SlimConfig) -> Path:
    """Check `run_dir` (check_run_dir), create it with the resolved config.yaml, set the thread count and seed
    every RNG."""
    check_run_dir(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))  # ranks of a launch all write it; readers see a whole one
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    return run_dir


class _StartStep(Callback):
    """Records the global step training starts at: after a resume, the restored checkpoint's step (None when training
    never starts: a run resumed at its step budget skips the training loop and its hooks)."""

    step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step = trainer.global_step


class ExpertsPolicy(Callback):
    """Applies `model_runtime.experts_implementation`, resolved for the device training runs on, to every experts
    module of the Lightning module and of `frozen(pl_module)` (models kept outside its module tree, e.g. a frozen
    teacher) once they are built and placed, before any forward; `implementation` is what ran."""

    def __init__(self, requested: str,
                 frozen: Callable[[pl.LightningModule], Iterable[torch.nn.Module | None]] = lambda _: ()) -> None:
        self.requested = requested
        self.frozen = frozen
        self.implementation = ""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.implementation = apply_experts_policy(self.requested, pl_module, *self.frozen(pl_module),
                                                   device=pl_module.device)


@dataclass
class FitResult:
    """A finished `fit`: the trainer, its wall seconds and the step it started at (0 unless resumed)."""

    trainer: pl.Trainer
    wall_seconds: float
    start_step: int

    def tokens_per_second(self, tokens_per_step: int) -> float:
        """Tokens trained by this process per wall second: a resumed run's earlier steps are not counted."""
        steps = self.trainer.global_step - self.start_step
        return round(steps * tokens_per_step / max(self.wall_seconds, 1e-9), 1)


def fit(module: pl.LightningModule, data: pl.LightningDataModule, cfg: TrainConfig, run_dir: Path,
        loggers: Sequence[Logger] = (), callbacks: Sequence[Callback] = ()) -> FitResult:
    """Fit (resuming from `<run_dir>/checkpoints/last.ckpt` when present) with extra loggers and callbacks; raises
    Preempted when a stop signal ended training early (last.ckpt is written: rerunning the command resumes)."""
    start_step = _StartStep()
    trainer = build_trainer(cfg, run_dir, loggers, [*callbacks, start_step])
    start = perf_counter()
    checkpoint = next(callback for callback in trainer.callbacks if isinstance(callback, GoodCheckpoint))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_path(run_dir, cfg))
    except SystemExit:  # Lightning's answer to Ctrl-C, after its graceful shutdown
        if not trainer.interrupted:
            raise
        raise Interrupted(f"interrupted at step {trainer.global_step}: {checkpoint.describe()}") from None
    stop = next(callback for callback in trainer.callbacks if isinstance(callback, StopAndCheckpoint))
    if stop.signalled is not None:
        raise Preempted(f"stopped on {stop.signalled} after step {trainer.global_step}: {checkpoint.describe()}")
    started = trainer.global_step if start_step.step is None else start_step.step
    return FitResult(trainer, perf_counter() - start, started)


def write_summary(run_dir: Path, name: str, summary: Any) -> None:
    """`<run_dir>/<name>.json` from a summary dataclass."""
    (run_dir / f"{name}.json").write_text(json.dumps(stamped(asdict(summary)), indent=2))
