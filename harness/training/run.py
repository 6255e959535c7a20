"""What every training command does around `Trainer.fit`: validate the trainer fields, prepare the run
directory, fit with resume from `last.ckpt`, and write the summary JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from harness.config.load import to_yaml
from harness.config.schema import SlimConfig, TrainConfig
from harness.errors import UserError
from harness.training.trainer import STRATEGIES, build_trainer, resume_path


def validate_train_config(cfg: TrainConfig, total_steps: int | None = None) -> None:
    """Refuse step counts that cannot make a run, naming the `train.` field. `total_steps` is the whole
    budget when this run is one stage of a progressive plan (warmup happens once, in the first stage)."""
    if cfg.max_steps < 1 or cfg.batch_size < 1:
        raise UserError("train.max_steps and train.batch_size must be >= 1")
    budget = cfg.max_steps if total_steps is None else total_steps
    if cfg.warmup_steps >= budget:
        raise UserError(f"train.warmup_steps ({cfg.warmup_steps}) must be < train.max_steps ({budget})")
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"train.strategy: unknown {cfg.strategy!r}; valid: {', '.join(STRATEGIES)}")
    if cfg.log_every < 1:
        raise UserError(f"train.log_every: must be >= 1, got {cfg.log_every}")
    processes = cfg.devices * cfg.num_nodes
    if cfg.batch_size % processes:
        raise UserError(f"train.batch_size ({cfg.batch_size}) must be divisible by the number of processes "
                        f"(train.devices x train.num_nodes = {processes}): each takes an equal slice of the batch")


def prepare_run(cfg: SlimConfig) -> Path:
    """Create `run_dir` with the resolved config.yaml, set the thread count and seed every RNG."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    return run_dir


def fit(module: pl.LightningModule, data: pl.LightningDataModule, cfg: TrainConfig, run_dir: Path,
        loggers: Sequence[Logger] = (), callbacks: Sequence[Callback] = ()) -> tuple[pl.Trainer, float]:
    """Fit (resuming from `<run_dir>/checkpoints/last.ckpt` when present) with extra loggers and callbacks;
    the trainer and wall seconds."""
    trainer = build_trainer(cfg, run_dir, loggers, callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(run_dir, cfg))
    return trainer, time.perf_counter() - start


def write_summary(run_dir: Path, name: str, summary: Any) -> None:
    """`<run_dir>/<name>.json` from a summary dataclass."""
    (run_dir / f"{name}.json").write_text(json.dumps(asdict(summary), indent=2))
