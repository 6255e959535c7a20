"""`slim distill` killed right after its step-N checkpoint: `python tests/killed_distill.py N KEY=VALUE ...`.

A callback raises when step N is about to start (the step-N `last.ckpt` is written by then), as a killed
job would stop; tests resume the run with plain `slim distill` and compare curves. A script file rather
than `python -c`, because Lightning relaunches the same command line for the other FSDP ranks.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from slim.harness.config.load import load_config
from slim.harness.training.distill import distill


class Killed(RuntimeError):
    """The simulated kill."""


class KillAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step}")


if __name__ == "__main__":
    distill(load_config(sys.argv[2:]), callbacks=[KillAtStep(int(sys.argv[1]))])
