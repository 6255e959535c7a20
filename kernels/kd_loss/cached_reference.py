"""Naive KD loss against a cached teacher top-k: full [N, V] student logits, autograd differentiates.

An offline teacher cache (harness/training/teacher_cache.py) keeps, per token, the teacher's k most likely
token ids S and their log-probabilities log q_S (normalized over the full vocabulary, T = 1). The rest of
the vocabulary is one "tail" bucket holding the teacher's remaining mass r_q = 1 - sum_S q. Per token:
- log p = log_softmax(student_hidden @ Ws^T) over the FULL vocabulary; r_p = sum_{i not in S} p_i;
- KL_tail(q || p) = sum_{i in S} q_i (log q_i - log p_i) + r_q (log r_q - log r_p).
This is the exact KL between the two distributions coarsened to (S, tail): >= 0, 0 when the student equals
the teacher whatever k is (renormalizing q over S instead would charge such a student -log sum_S q and pull
it away from the teacher when S holds little mass), and the full-vocab KL of reference.py when S = V.
Gradient w.r.t. the student logits: p_i - q_i on S, p_i (1 - r_q / r_p) off S (the student's own tail shape
rescaled to the teacher's tail mass). Only T = 1: the tail mass at another temperature needs the teacher's
full-vocab partition function there, which the cache does not hold.
Other conventions (fp32 softmax, `mask`, `reduction`, frozen teacher) are those of reference.py.

`cached_kd_implementations` registers every implementation of this signature ("reference" here,
"chunked" in cached.py); with `distill.teacher_cache` set, `distill.kd_kernel` picks one of them.
"""

from __future__ import annotations

import torch

from slim.harness.registry import Registry
from slim.kernels.kd_loss import KDLoss
from slim.kernels.kd_loss.reference import REDUCTIONS, reduce_per_token

cached_kd_implementations: Registry[KDLoss] = Registry.of_group("slim.cached_kd_kernels")


def check_cached_kd_inputs(student_hidden: torch.Tensor, student_head_weight: torch.Tensor, teacher_ids: torch.Tensor,
                           teacher_logits: torch.Tensor, temperature: float, mask: torch.Tensor | None,
                           reduction: str) -> None:
    """Raise ValueError naming the argument when shapes, dtypes, temperature, mask or reduction are invalid."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if temperature != 1.0:
        raise ValueError(f"temperature: the cached-teacher loss is defined at 1 only (the cache holds T = 1 "
                         f"log-probs), got {temperature}")
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


def teacher_tail_mass(q: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[N] teacher mass outside its cached top-k: 1 - sum_S q, clamped at 0 (fp16 storage can overshoot 1);
    exactly 0 when the support is the whole vocabulary."""
    if q.shape[1] == vocab_size:
        return q.new_zeros(q.shape[0])
    return (1.0 - q.sum(dim=-1)).clamp_min(0.0)


@cached_kd_implementations.register("reference")
def kd_loss_cached_reference(student_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                             teacher_ids: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                             mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Naive KL over the cached teacher top-k + tail bucket, from full [N, V] student logits (the baseline)."""
    check_cached_kd_inputs(student_hidden, student_head_weight, teacher_ids, teacher_logits, temperature, mask,
                           reduction)
    log_p = torch.log_softmax((student_hidden @ student_head_weight.T).float(), dim=-1)  # [N, V]
    ids = teacher_ids.long()
    log_q = teacher_logits.detach().float()  # [N, k]
    q = log_q.exp()
    tail_q = teacher_tail_mass(q, log_p.shape[1])
    log_tail_p = log_p.scatter(1, ids, float("-inf")).logsumexp(dim=-1)
    tail_term = torch.where(tail_q > 0, tail_q * (tail_q.log() - log_tail_p), 0.0)
    return reduce_per_token((q * (log_q - log_p.gather(1, ids))).sum(dim=-1) + tail_term, mask, reduction)
