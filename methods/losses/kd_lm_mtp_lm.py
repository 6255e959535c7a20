"""`kd+lm+mtp_lm`: KD + LM on the backbone, the MTP module trained on ground truth (Table 3 "NTP KD + LM + MTP loss").

The MTP term is weighted β, not eq 12's β(1−λ): with λ starting at 1 the latter is 0, so the MTP
module would get no training signal early on and the row would not be the usual MTP loss that Table 4
compares MTP KD against. The row differs from `full` in how the MTP module is supervised.
"""

from __future__ import annotations

import torch

from slim.harness.training.loss_mixes import LossMix, LossTerms, loss_mixes


def kd_lm_mtp_lm(terms: LossTerms, lam: float, beta: float) -> torch.Tensor:
    """(1−λ)·L_LM + λ·L_KD + β·L_MTP-LM (Table 3 "NTP KD + LM + MTP loss")."""
    return (1 - lam) * terms["lm"] + lam * terms["kd"] + beta * terms["mtp_lm"]


loss_mixes.register("kd+lm+mtp_lm")(LossMix(kd_lm_mtp_lm, needs=frozenset({"lm", "kd", "mtp_lm"})))
