"""Knowledge-distillation loss KL(teacher || student) from hidden states and LM-head weights.

Every implementation has the signature of `kd_loss_reference` and is registered in
`kd_implementations` ("reference": naive full logits; "chunked": token-chunked, logits never fully
materialized; "triton": the chunked driver with a fused Triton softmax/KL/gradient step, present only
when triton is installed). The loss is the KL divergence, not the soft cross-entropy of SlimQwen eq 11:
the two differ by the teacher entropy, a constant of the student, so the student gradients are the same,
and the KL is 0 at a perfect student. No T^2 factor is applied: callers that want Hinton's scaling
multiply the scalar (see reference.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slim.harness.registry import Registry

KDLoss = Callable[..., torch.Tensor]

kd_implementations: Registry[KDLoss] = Registry.of_group("slim.kd_kernels")

from slim.kernels.kd_loss.chunked import kd_loss_chunked  # noqa: E402  (registers after the registry exists)
from slim.kernels.kd_loss.reference import kd_loss_reference  # noqa: E402

__all__ = ["KDLoss", "kd_implementations", "kd_loss_chunked", "kd_loss_reference"]
