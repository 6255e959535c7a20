"""`full`: SlimQwen's total objective, eq 12."""

from __future__ import annotations

import torch

from slim.harness.training.loss_mixes import LossMix, LossTerms, loss_mixes


def full(terms: LossTerms, lam: float, beta: float) -> torch.Tensor:
    """(1−λ)·L_LM + λ·L_KD + β·((1−λ)·L_MTP-LM + λ·L_MTP-KD) (eq 12, Table 3's full objective)."""
    backbone = (1 - lam) * terms["lm"] + lam * terms["kd"]
    mtp = (1 - lam) * terms["mtp_lm"] + lam * terms["mtp_kd"]
    return backbone + beta * mtp


loss_mixes.register("full")(LossMix(full, needs=frozenset({"lm", "kd", "mtp_lm", "mtp_kd"})))
