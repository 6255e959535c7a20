"""Loss mixes (SlimQwen Table 3 rows): how the per-term losses become the training loss at the current λ, β.

Terms (defined in slim.harness.training.loss_terms): "lm" (L_LM), "kd" (L_KD), "mtp_lm" (L_MTP-LM, eq 10) and
"mtp_kd" (L_MTP-KD, eq 11). A mix declares the terms it `needs`, so only those are computed (and the MTP
module runs only when one of them is an MTP term). A mix is linear in its terms (`LossMix.coefficients`
checks it), so the training module computes both terms of each head in one fused pass at the mix's weights.
λ balances KD against LM, β the MTP terms against the backbone terms; mixes without a term ignore its
weight. The MoE load-balancing loss is added by the training module outside every mix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from slim.harness.registry import Registry

TERMS = frozenset({"lm", "kd", "mtp_lm", "mtp_kd"})
MTP_TERMS = frozenset({"mtp_lm", "mtp_kd"})

LossTerms = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LossMix:
    """A combination `combine(terms, lam, beta)` of the scalar terms named in `needs`."""

    combine: Callable[[LossTerms, float, float], torch.Tensor]
    needs: frozenset[str]

    def __post_init__(self) -> None:
        assert self.needs <= TERMS, f"unknown loss terms {sorted(self.needs - TERMS)}"
        object.__setattr__(self, "__doc__", self.combine.__doc__)  # what `slim methods` lists

    @property
    def needs_mtp(self) -> bool:
        return bool(self.needs & MTP_TERMS)

    def __call__(self, terms: LossTerms, lam: float, beta: float) -> torch.Tensor:
        assert self.needs <= terms.keys(), f"missing loss terms {sorted(self.needs - terms.keys())}"
        return self.combine(terms, lam, beta)

    def coefficients(self, lam: float, beta: float) -> dict[str, float]:
        """Each needed term's weight at (λ, β). A mix must be linear in its terms: the training module then folds
        both terms of a head into one pass over its vocabulary (kernels/kd_loss/fused_head.py)."""
        def at(values: Mapping[str, float]) -> float:
            return float(self.combine({name: torch.tensor(values.get(name, 0.0), dtype=torch.float64)
                                       for name in self.needs}, lam, beta))

        weights = {name: at({name: 1.0}) for name in self.needs}
        probe = {name: 1.0 + index for index, name in enumerate(sorted(self.needs))}
        expected = sum(weights[name] * value for name, value in probe.items())
        if at({}) != 0.0 or not math.isclose(at(probe), expected, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"loss mix {self.combine.__name__}: not a linear combination of its terms "
                             f"{sorted(self.needs)} at lambda={lam}, beta={beta}")
        return weights


loss_mixes: Registry[LossMix] = Registry.of_group("slim.loss_mixes")
