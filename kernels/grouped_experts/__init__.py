"""Routed SwiGLU experts on tokens already sorted by expert: unweighted outputs, one row per (token, expert).

Every implementation has the signature of `expert_outputs_loop` and is registered in
`expert_output_implementations` ("loop": one Python-level call per hit expert, the reference, as transformers'
eager experts loop does; "grouped": two grouped GEMMs for all experts, the kernel of transformers' `grouped_mm`
experts implementation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slim.harness.registry import Registry

ExpertOutputs = Callable[..., torch.Tensor]

expert_output_implementations: Registry[ExpertOutputs] = Registry.of_group("slim.expert_output_kernels")

from slim.kernels.grouped_experts.grouped import expert_outputs_grouped  # noqa: E402  (registers after the registry)
from slim.kernels.grouped_experts.reference import expert_outputs_loop  # noqa: E402

__all__ = ["ExpertOutputs", "expert_output_implementations", "expert_outputs_grouped", "expert_outputs_loop"]
