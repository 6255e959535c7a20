"""AdamW + warmup/cosine schedule in Lightning's `configure_optimizers` format."""

from __future__ import annotations

import torch
from torch import nn

from slim.harness.config.schema import TrainConfig
from slim.harness.training.schedule import warmup_cosine


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and expert tensors; never decay norms, biases or 1-D gates."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def configure_adamw(model: nn.Module, cfg: TrainConfig, total_steps: int, step_offset: int = 0) -> dict:
    """AdamW with per-step warmup + cosine-to-floor LR, as Lightning expects it.

    Local step s gets the multiplier of global step s + `step_offset` on a `total_steps` decay, so the
    stages of a progressive plan continue one warmup + cosine instead of restarting it.
    """
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))

    def multiplier(step: int) -> float:
        return warmup_cosine(step + step_offset, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
