"""`kd+mtp_kd`: pure KD on the backbone and on the MTP module (eq 12 with λ = 1)."""

from __future__ import annotations

import torch

from slim.harness.training.loss_mixes import LossMix, LossTerms, loss_mixes


def kd_mtp_kd(terms: LossTerms, lam: float, beta: float) -> torch.Tensor:
    """L_KD + β·L_MTP-KD (Table 3: MTP KD added to pure NTP KD)."""
    return terms["kd"] + beta * terms["mtp_kd"]


loss_mixes.register("kd+mtp_kd")(LossMix(kd_mtp_kd, needs=frozenset({"kd", "mtp_kd"})))
