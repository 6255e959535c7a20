"""`kd+lm`: next-token KD mixed with the LM loss (eq 12 with β = 0)."""

from __future__ import annotations

import torch

from slim.harness.training.loss_mixes import LossMix, LossTerms, loss_mixes


def kd_lm(terms: LossTerms, lam: float, beta: float) -> torch.Tensor:
    """(1−λ)·L_LM + λ·L_KD (Table 3 "NTP KD + LM")."""
    return (1 - lam) * terms["lm"] + lam * terms["kd"]


loss_mixes.register("kd+lm")(LossMix(kd_lm, needs=frozenset({"lm", "kd"})))
