"""Gradient accumulation (`train.micro_batch_size`): micro-batches per optimizer step, and step-mean logging.

Each process's slice of the global batch (`train.batch_size` / processes) is split into equal micro-batches,
forwarded and backwarded one at a time; Lightning divides each micro-batch's loss by their number and steps
the optimizer after the last. Every term of the training losses is a mean over equal-length sequences, so
the accumulated gradient is the whole slice's. The one exception is the MoE balance loss: its expert load f
is counted per forward, over the current micro-batch of every process (training/load_balance.py); the
gradient of the later micro-batches would need the load of the whole step before their backward.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from slim.harness.config.schema import TrainConfig


def micro_batches_per_step(cfg: TrainConfig) -> int:
    """How many micro-batches each process runs per optimizer step (1 without accumulation)."""
    if not cfg.micro_batch_size:
        return 1
    return cfg.batch_size // (cfg.devices * cfg.num_nodes) // cfg.micro_batch_size


class StepMean:
    """Running means of per-micro-batch values over the micro-batches of one optimizer step.

    Under accumulation Lightning writes a step's metrics once, after its last micro-batch, with the value
    logged last; logging these running means makes that value the mean over the whole step, as without
    accumulation (micro-batches are equal-sized, so the mean of their means is the slice's mean).
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}

    def __call__(self, step: int, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add one micro-batch's `values` of optimizer step `step`; the means so far in that step."""
        if step != self.step:
            self.step, self.count, self.sums = step, 0, {}
        self.count += 1
        for name, value in values.items():
            self.sums[name] = self.sums[name] + value.detach() if name in self.sums else value.detach()
        return {name: total / self.count for name, total in self.sums.items()}
