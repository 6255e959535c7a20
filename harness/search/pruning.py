"""Optuna's Lightning pruning callback, keyed by optimizer step: a run here is one step-budgeted epoch, so the
stock callback (keyed by epoch) would report every validation at step 0 and Optuna would ignore all but the first."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
from optuna_integration import PyTorchLightningPruningCallback


class StepPruning(PyTorchLightningPruningCallback):
    """Reports `monitor` at each validation as the global step across progressive stages (the module's
    `step_offset` plus the trainer's step) and raises `optuna.TrialPruned` when the study's pruner says so."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = getattr(pl_module, "step_offset", 0) + trainer.global_step
        super().on_validation_end(trainer, SimpleNamespace(current_epoch=step))  # the parent reads only this
