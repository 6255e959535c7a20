"""The expert criterion `sharp`: REAP's score raised to `compress.experts.sharpness` (1 = REAP's ranking, larger
values make a global budget favour the strongest experts more)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slim.harness.compression.expert_criteria import criteria
from slim.harness.config.sections import config_options
from slim.harness.errors import UserError


@config_options("compress.experts")
@dataclass
class SharpOptions:
    sharpness: float = 1.0  # exponent on the REAP score, > 0

    def validate(self) -> None:
        if not self.sharpness > 0:
            raise UserError(f"compress.experts.sharpness: must be > 0, got {self.sharpness}")


@criteria.register("sharp")
def sharp(stats, moe, *, sharpness: float) -> torch.Tensor:
    """REAP score to the power compress.experts.sharpness (an example third-party criterion)."""
    return criteria.get("reap")(stats, moe) ** sharpness
