"""`slim distill` stopped at step N: `python tests/killed_distill.py N [SIGNAL] KEY=VALUE ...`.

Without SIGNAL a callback raises when step N is about to start (the step-N `last.ckpt` is written by then), as a
killed job would stop. With SIGNAL (e.g. SIGTERM) rank 0 alone sends it to itself as step N starts, as Slurm
would ahead of a preemption, and the run goes through the CLI so its exit status is the one a requeue script sees.
Tests resume the run with plain `slim distill` and compare curves. A script file rather than `python -c`, because
Lightning relaunches the same command line for the other FSDP ranks.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from slim.harness.cli.main import main
from slim.harness.config.load import load_config
from slim.harness.training import distill as distill_module
from slim.harness.training.distill import distill


class Killed(RuntimeError):
    """The simulated kill."""


class StopAtStep(Callback):
    def __init__(self, step: int, signal_name: str | None) -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        if self.signal_name is None:
            raise Killed(f"killed before step {self.step}")
        if trainer.global_rank == 0 and batch_idx % trainer.accumulate_grad_batches == 0:
            os.kill(os.getpid(), signal.Signals[self.signal_name])


if __name__ == "__main__":
    step, rest = int(sys.argv[1]), sys.argv[2:]
    signal_name = rest.pop(0) if rest and rest[0].startswith("SIG") else None
    if signal_name is None:
        distill(load_config(rest), callbacks=[StopAtStep(step, None)])
    else:
        # `slim distill` itself (its exit status), its distill given the callback
        distill_module.distill = functools.partial(distill, callbacks=[StopAtStep(step, signal_name)])
        sys.exit(main(["distill", *rest]))
