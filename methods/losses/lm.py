"""`lm`: language modeling only (eq 12 with λ = 0, β = 0)."""

from __future__ import annotations

import torch

from slim.harness.training.loss_mixes import LossMix, LossTerms, loss_mixes


def lm(terms: LossTerms, lam: float, beta: float) -> torch.Tensor:
    """L_LM: next-token cross entropy on the ground truth, no teacher."""
    return terms["lm"]


loss_mixes.register("lm")(LossMix(lm, needs=frozenset({"lm"})))
