"""Build a Lightning Trainer for a run directory: checkpoints, resume, CSV metrics, progress bar."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from harness.config.schema import TrainConfig


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def resume_path(run_dir: str | Path, cfg: TrainConfig) -> str | None:
    """The last checkpoint of an interrupted run, when resuming is enabled."""
    last = checkpoint_dir(run_dir) / "last.ckpt"
    return str(last) if cfg.resume and last.exists() else None


def build_trainer(cfg: TrainConfig, run_dir: str | Path) -> pl.Trainer:
    """Step-based trainer: validation and checkpointing every `val_every` steps, atomic checkpoint files."""
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir(run_dir), save_last=True, save_top_k=0, every_n_train_steps=cfg.val_every
    )
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        logger=CSVLogger(str(run_dir), name="metrics"),  # version_N per (re)start: resuming never overwrites
        callbacks=[checkpoint, TQDMProgressBar(refresh_rate=10)],
        enable_model_summary=False,
    )
