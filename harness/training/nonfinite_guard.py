"""Never train on, or keep, a diverged state.

`NonFiniteGuard` stops a run before the optimizer applies a NaN/inf loss or gradient; `GoodCheckpoint` writes
`last.ckpt` only from a state whose training loss, validation loss and parameters are all finite, so a rerun
always resumes from a good state. Both work for every Lightning module of the harness (pretrain, distill, the
adaptations' stages) and under FSDP (every rank takes the same decision).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.distributed.tensor import DTensor

from slim.harness.atomic import disk_full, remove_path, swap_in
from slim.harness.errors import UserError

LAST_CHECKPOINT = "last.ckpt"


class NonFiniteLossError(UserError):
    """A NaN/inf loss or gradient: training stops before the optimizer step; the message names the checkpoint
    a rerun resumes from (or says there is none)."""


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if isinstance(value, DTensor) else value


def _finite(value: object) -> bool:
    """A logged metric is finite (absent metrics count as finite: nothing was measured)."""
    if value is None:
        return True
    return bool(torch.isfinite(_full(value)).all()) if isinstance(value, torch.Tensor) else math.isfinite(float(value))


def _parameters_finite(module: torch.nn.Module) -> bool:
    """Every local parameter (each rank's FSDP shard) is finite."""
    return all(bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()) for p in module.parameters())


class GoodCheckpoint(Callback):
    """`<dirpath>/last.ckpt` after every validation, at the end of training and when `save` is called between
    validations (slim.harness.training.preemption), only when the state is good: finite parameters, finite last
    training loss and finite last validation loss (`train_loss` records the training loss it was written at).

    The checkpoint is written beside as `last.ckpt.tmp` (a file, or a directory of shards under FSDP) and then
    renamed over the previous one, so a kill during the save leaves the previous good checkpoint. `last_good_step`
    travels inside the checkpoint, so a resumed run still knows which step it holds.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.last_good_step: int | None = None
        self.resumed_step: int | None = None
        self.train_loss: float | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / LAST_CHECKPOINT

    def state_dict(self) -> dict[str, Any]:
        return {"last_good_step": self.last_good_step, "train_loss": self.train_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_good_step = state_dict.get("last_good_step")
        self.train_loss = state_dict.get("train_loss")
        self.resumed_step = self.last_good_step

    def _good(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        metrics = trainer.callback_metrics
        local = (_finite(metrics.get("train/loss")) and _finite(metrics.get("val/loss"))
                 and _parameters_finite(pl_module))
        return trainer.strategy.reduce_boolean_decision(local, all=True)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write last.ckpt for the current step if the state is good (a collective: every rank calls it)."""
        if (trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking
                or self.last_good_step == trainer.global_step):
            return
        if not self._good(trainer, pl_module):
            rank_zero_warn(f"step {trainer.global_step}: non-finite loss or weights, checkpoint not written; "
                           f"{self.describe()}")
            return
        previous, self.last_good_step = self.last_good_step, trainer.global_step
        loss = trainer.callback_metrics.get("train/loss")
        self.train_loss = None if loss is None else float(_full(loss) if isinstance(loss, torch.Tensor) else loss)
        tmp = self.path.with_name(f"{LAST_CHECKPOINT}.tmp")
        if trainer.is_global_zero:
            remove_path(tmp)
        trainer.strategy.barrier()
        try:
            trainer.save_checkpoint(tmp)
        except BaseException as error:
            self.last_good_step = previous
            # every rank (tolerating the others): nothing partial stays on a full disk
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            full = disk_full(tmp, error)
            if full is not None:
                raise full from error
            raise
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            swap_in(tmp, self.path, self.path.with_name(f"{LAST_CHECKPOINT}.old"))
        trainer.strategy.barrier()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module)

    def describe(self) -> str:
        """Which checkpoint a rerun resumes from, in words."""
        if self.last_good_step is None:
            return "no checkpoint was written, a rerun starts from the beginning"
        return f"the last good checkpoint is {self.path} (step {self.last_good_step}), a rerun resumes from it"


class NonFiniteGuard(Callback):
    """Raise `NonFiniteLossError` on a non-finite loss (before backward) or gradient norm (before the optimizer
    step), naming the bad loss terms (`pl_module.loss_terms`, when the module keeps them) and the checkpoint
    a rerun would resume from. Logs `train/grad_norm`."""

    def __init__(self, checkpoint: GoodCheckpoint) -> None:
        self.checkpoint = checkpoint

    def _error(self, trainer: pl.Trainer, what: str) -> NonFiniteLossError:
        step = trainer.global_step
        if self.checkpoint.resumed_step == step:
            return NonFiniteLossError(
                f"step {step}: non-finite {what}; training stopped at the first step after resuming from "
                f"{self.checkpoint.path} (step {step}): that state already diverges; set train.resume=false to start "
                "over (and lower train.lr)")
        return NonFiniteLossError(f"step {step}: non-finite {what}; training stopped before the optimizer step; "
                                  f"{self.checkpoint.describe()}")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            terms = getattr(pl_module, "loss_terms", {})
            bad = [f"train/{name}" for name, value in terms.items() if not torch.isfinite(value)]
            raise self._error(trainer, ", ".join(bad) or "train/loss")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """A finite loss can still give inf/NaN gradients (overflow)."""
        grads = [param.grad for param in pl_module.parameters() if param.grad is not None]
        norm = _full(torch.nn.utils.get_total_norm(grads))
        if not torch.isfinite(norm):
            raise self._error(trainer, "gradient norm")
        pl_module.log("train/grad_norm", norm)
