"""`weight_norm`: data-free importance, the Frobenius norm of the expert's weights.

Needs no calibration pass; a baseline for the statistics-based criteria.
"""

from __future__ import annotations

from typing import Any

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_criteria import criteria


@criteria.register("weight_norm")
def weight_norm(stats: MoELayerStats | None, moe: Any) -> torch.Tensor:
    """Frobenius norm of each expert's [gate_up; down] weights (no calibration statistics needed)."""
    gate_up = torch.linalg.vector_norm(moe.gate_up_proj.detach(), dim=(1, 2), dtype=torch.float64)  # [E]
    down = torch.linalg.vector_norm(moe.down_proj.detach(), dim=(1, 2), dtype=torch.float64)  # [E]
    return torch.sqrt(gate_up**2 + down**2)
