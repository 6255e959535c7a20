"""Build a Lightning Trainer for a run directory: checkpoints, resume, CSV metrics, progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

from slim.harness.config.schema import TrainConfig
from slim.harness.training.accumulation import StepMean, micro_batches_per_step
from slim.harness.training.nonfinite_guard import LAST_CHECKPOINT, GoodCheckpoint, NonFiniteGuard
from slim.harness.training.precision import trainer_precision
from slim.harness.training.preemption import StopAndCheckpoint

STRATEGIES = ("auto", "fsdp")
# A checkpoint holds fp32 weights and AdamW's two fp32 moments (12 bytes a trained parameter), and the atomic swap
# keeps the previous checkpoint until the new one is whole: room for two.
CHECKPOINT_BYTES_PER_PARAM = 2 * 12
PRECISIONS = ("32-true", "bf16-mixed")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def resume_path(run_dir: str | Path, cfg: TrainConfig) -> str | None:
    """The last checkpoint of an interrupted run, when resuming is enabled (`last.ckpt.old`: a sharded checkpoint
    whose replacement was killed between its two renames)."""
    last = checkpoint_dir(run_dir) / LAST_CHECKPOINT
    old = last.with_name(f"{LAST_CHECKPOINT}.old")
    if not cfg.resume:
        return None
    return str(last) if last.exists() else str(old) if old.exists() else None


class GlobalBatchLoss(Callback):
    """Logs `train/global_loss`: each step's loss averaged over all processes and micro-batches, i.e. over the
    global batch (`train/loss` is rank 0's own slice), so curves of runs on different process counts compare."""

    def __init__(self) -> None:
        self.step_mean = StepMean()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # Lightning divided it by the micro-batches per step
            accumulation = trainer.accumulate_grad_batches
            mean = self.step_mean(batch_idx // accumulation, {"loss": loss * accumulation})["loss"]
            pl_module.log("train/global_loss", mean, sync_dist=True)


def build_strategy(cfg: TrainConfig) -> str | Strategy:
    """"fsdp": FSDP2 (`fully_shard` in the modules' configure_model) over all processes of all nodes, no
    tensor parallelism; Lightning's FSDPStrategy refuses CPU, ModelParallelStrategy runs there over gloo."""
    if cfg.strategy == "fsdp":
        return ModelParallelStrategy(data_parallel_size=cfg.devices * cfg.num_nodes, tensor_parallel_size=1)
    return cfg.strategy


def build_trainer(cfg: TrainConfig, run_dir: str | Path, loggers: Sequence[Logger] = (),
                  callbacks: Sequence[Callback] = ()) -> pl.Trainer:
    """Step-based trainer: validation and checkpointing every `val_every` steps and at the end, checkpoints between
    validations by steps, minutes or a stop signal (slim.harness.training.preemption), atomic checkpoints of finite
    states only, a stop on non-finite losses or gradients; `loggers` (e.g. W&B) log beside the CSV
    metrics, `callbacks` (e.g. search pruning) run after the built-in ones. Lightning counts validation
    intervals and batches in micro-batches, hence the scaling under gradient accumulation."""
    checkpoint = GoodCheckpoint(checkpoint_dir(run_dir))
    micro_batches = micro_batches_per_step(cfg)
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg),
        use_distributed_sampler=False,  # the data module slices each global batch by rank itself
        precision=trainer_precision(cfg),  # under FSDP: FSDP2's MixedPrecisionPolicy, no autocast on top
        gradient_clip_val=cfg.grad_clip,
        accumulate_grad_batches=micro_batches,
        val_check_interval=cfg.val_every * micro_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches * micro_batches,  # the data module splits validation batches alike
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every,
        logger=[CSVLogger(str(run_dir), name="metrics"), *loggers],  # CSV version_N per (re)start: never overwritten
        callbacks=[checkpoint, NonFiniteGuard(checkpoint), GlobalBatchLoss(), StopAndCheckpoint(checkpoint, cfg),
                   TQDMProgressBar(refresh_rate=10), *callbacks],
        enable_model_summary=False,
        enable_checkpointing=False,  # GoodCheckpoint writes last.ckpt
    )
