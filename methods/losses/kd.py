"""`kd`: pure next-token distillation (eq 12 with λ = 1, β = 0)."""

from __future__ import annotations

import torch

from slim.harness.training.loss_mixes import LossMix, LossTerms, loss_mixes


def kd(terms: LossTerms, lam: float, beta: float) -> torch.Tensor:
    """L_KD: next-token KD from the teacher only (Table 3: pure NTP KD)."""
    return terms["kd"]


loss_mixes.register("kd")(LossMix(kd, needs=frozenset({"kd"})))
