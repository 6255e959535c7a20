"""Naive KD loss against a cached teacher top-k: full [N, V] student logits, autograd differentiates.

An offline teacher cache (harness/training/teacher_cache.py) keeps, per token, the teacher's k most likely
token ids S and their logits t (raw logits or log-probabilities: the loss only uses differences of t, so
both give the same value at every temperature). Per token the loss is the KL over the cached support:
- q = softmax(t / T) over S: the teacher renormalized over its top-k support;
- log p = log_softmax(student_hidden @ Ws^T / T) over the FULL vocabulary, gathered at S;
- KL_S(q || p) = sum_{i in S} q_i (log q_i - log p_i).
It is >= 0 (p restricted to S has mass <= 1), is 0 only when the student puts exactly q on S and nothing
elsewhere, and equals the full-vocab KL of reference.py when S is the whole vocabulary. The student
gradient w.r.t. its logits is (p - q scattered onto S) / T, so mass outside S is pushed down.
Its target is the truncated teacher, not the teacher: a student equal to the teacher scores -log(teacher
mass on S) at T = 1, and training sharpens the student towards S; the value tracks the full KL only when S
holds nearly all of the teacher's mass (pick k from that mass).
Other conventions (fp32 softmax, no T^2, `mask`, `reduction`, frozen teacher) are those of reference.py.

`cached_kd_implementations` registers every implementation of this signature ("reference" here,
"chunked" in cached.py); with `distill.teacher_cache` set, `distill.kd_kernel` picks one of them.
"""

from __future__ import annotations

import torch

from harness.registry import Registry
from kernels.kd_loss import KDLoss
from kernels.kd_loss.reference import REDUCTIONS

cached_kd_implementations: Registry[KDLoss] = Registry("cached-teacher kd loss kernel", package="kernels.kd_loss")


def check_cached_kd_inputs(student_hidden: torch.Tensor, student_head_weight: torch.Tensor, teacher_ids: torch.Tensor,
                           teacher_logits: torch.Tensor, temperature: float, mask: torch.Tensor | None,
                           reduction: str) -> None:
    """Raise ValueError naming the argument when shapes, dtypes, temperature, mask or reduction are invalid."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if (student_hidden.dim() != 2 or student_head_weight.dim() != 2
            or student_head_weight.shape[1] != student_hidden.shape[1]):
        raise ValueError(f"student_hidden {tuple(student_hidden.shape)} does not match student_head_weight "
                         f"{tuple(student_head_weight.shape)}: expected [N, d] and [V, d]")
    num_tokens, vocab_size = student_hidden.shape[0], student_head_weight.shape[0]
    if teacher_ids.dim() != 2 or teacher_ids.shape[0] != num_tokens or not 1 <= teacher_ids.shape[1] <= vocab_size:
        raise ValueError(f"teacher_ids {tuple(teacher_ids.shape)}: expected [N={num_tokens}, k] with 1 <= k <= "
                         f"V={vocab_size}")
    if teacher_ids.dtype.is_floating_point or teacher_ids.dtype == torch.bool:
        raise ValueError(f"teacher_ids: expected an integer tensor, got {teacher_ids.dtype}")
    if teacher_logits.shape != teacher_ids.shape or not teacher_logits.dtype.is_floating_point:
        raise ValueError(f"teacher_logits {teacher_logits.dtype} {tuple(teacher_logits.shape)}: expected a floating "
                         f"tensor shaped like teacher_ids {tuple(teacher_ids.shape)}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (num_tokens,)):
        raise ValueError(f"mask: expected a bool tensor of shape ({num_tokens},), got {mask.dtype} "
                         f"{tuple(mask.shape)}")


@cached_kd_implementations.register("reference")
def kd_loss_cached_reference(student_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                             teacher_ids: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                             mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Naive KL over the cached teacher top-k support, from full [N, V] student logits (the correctness baseline)."""
    check_cached_kd_inputs(student_hidden, student_head_weight, teacher_ids, teacher_logits, temperature, mask,
                           reduction)
    log_p = torch.log_softmax((student_hidden @ student_head_weight.T).float() / temperature, dim=-1)  # [N, V]
    log_q = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # [N, k]
    per_token = (log_q.exp() * (log_q - log_p.gather(1, teacher_ids.long()))).sum(dim=-1)  # [N]
    if mask is not None:
        per_token = per_token * mask
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / (per_token.numel() if mask is None else mask.sum().clamp_min(1))
