"""Checkpoints between validations: every N steps, every M minutes, and on a stop signal before the job is killed.

A week-long job on a shared cluster is preempted or hits its time limit: Slurm sends SIGTERM (or, with
`sbatch --signal=B:USR1@300`, SIGUSR1 some minutes ahead), then SIGKILL. `StopAndCheckpoint` replaces the handlers
of `train.stop_signals` once training starts (Lightning's own SIGTERM and Slurm auto-requeue handlers included, which
would write `hpc_ckpt_*.ckpt` files the harness never resumes): a handler only records the signal. At the end of
every optimizer step the ranks agree (one small all-reduce) whether any rank was signalled or its checkpoint clock
ran out; then every rank writes `last.ckpt` through GoodCheckpoint (the same atomic path, the same finiteness
checks) and, on a signal, training stops and `fit` raises `Preempted`, which the CLI turns into exit status 75.
A rerun of the same command resumes at the step after the signal: no finished step is recomputed.
"""

from __future__ import annotations

import signal
import threading
from time import monotonic
from types import FrameType

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from slim.harness.config.schema import TrainConfig
from slim.harness.errors import UserError
from slim.harness.training.nonfinite_guard import GoodCheckpoint

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP")
NOTHING, TIMER, SIGNAL = 0, 1, 2  # what a step end asks for, agreed as the maximum over ranks


def validate_checkpointing(cfg: TrainConfig) -> None:
    """One line naming the first unknown stop signal (the intervals' ranges are checked at load)."""
    for name in cfg.stop_signals:
        if name not in STOP_SIGNALS:
            raise UserError(f"train.stop_signals: unknown {name!r}; valid: {', '.join(STOP_SIGNALS)}")


class StopAndCheckpoint(Callback):
    """last.ckpt every `checkpoint_every_steps` steps, every `checkpoint_every_minutes` minutes, and on any of
    `stop_signals` (then training stops; `signalled` names the signal)."""

    def __init__(self, checkpoint: GoodCheckpoint, cfg: TrainConfig) -> None:
        self.checkpoint = checkpoint
        self.every_steps = cfg.checkpoint_every_steps
        self.every_seconds = cfg.checkpoint_every_minutes * 60
        self.signals = [signal.Signals[name] for name in cfg.stop_signals]
        self.received: signal.Signals | None = None  # on this rank
        self.signalled: str | None = None  # agreed by all ranks: training stopped on it
        self._previous: dict[signal.Signals, object] = {}
        self._last_save = monotonic()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = monotonic()
        if threading.current_thread() is threading.main_thread():  # Python installs handlers there only
            self._previous = {signum: signal.signal(signum, self._record) for signum in self.signals}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Hand each signal back to the handler it had, unless someone else already did: after a finished fit
        Lightning restores its own pre-fit handlers first, and restoring ours over them would leave Lightning's
        handlers of a finished trainer installed."""
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._record:
                signal.signal(signum, handler)
        self._previous = {}

    def _wanted(self) -> int:
        """This rank's request at a step end."""
        if self.received is not None:
            return SIGNAL
        return TIMER if self.every_seconds and monotonic() - self._last_save >= self.every_seconds else NOTHING

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside an optimizer step (gradient accumulation)
        wanted = self._wanted()
        if self.signals or self.every_seconds:  # ranks' clocks and signals differ: take the largest request
            wanted = int(trainer.strategy.reduce(torch.tensor(wanted, device=pl_module.device), reduce_op="max"))
        due_steps = self.every_steps and trainer.global_step % self.every_steps == 0  # the same on every rank
        if wanted == NOTHING and not due_steps:
            return
        self.checkpoint.save(trainer, pl_module)
        self._last_save = monotonic()
        if wanted == SIGNAL:
            self.signalled = self.received.name if self.received is not None else "a stop signal (another rank)"
            trainer.should_stop = True
