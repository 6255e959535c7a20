"""Naive KD loss: materializes the full [N, V] logits of both models and lets autograd differentiate.

This is the baseline the chunked kernels are tested and benchmarked against. Conventions shared by all
implementations (checked by `check_kd_inputs`):
- per token, KL(q || p) = sum_v q_v (log q_v - log p_v) with p = softmax(student_hidden @ Ws^T / T),
  q = softmax(teacher_hidden @ Wt^T / T); softmax, logs and sums run in fp32 whatever the input dtype;
- the result is NOT multiplied by T^2 (Hinton's convention keeps gradient size constant across T; do
  it at the call site, where the loss mix owns every weight);
- `mask` [N] bool keeps the True tokens; "mean" divides by their count (0 kept tokens -> loss 0, not
  NaN), "sum" does not divide;
- the teacher is frozen: its tensors are detached, so they never receive a gradient.
"""

from __future__ import annotations

import torch

from slim.kernels.kd_loss import kd_implementations

REDUCTIONS = ("mean", "sum")


def check_kd_inputs(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                    teacher_head_weight: torch.Tensor, temperature: float, mask: torch.Tensor | None,
                    reduction: str) -> None:
    """Raise ValueError naming the argument when shapes, temperature, mask or reduction are invalid."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    num_tokens, vocab_size = student_hidden.shape[0], student_head_weight.shape[0]
    if student_hidden.dim() != 2 or student_head_weight.shape[1] != student_hidden.shape[1]:
        raise ValueError(f"student_hidden {tuple(student_hidden.shape)} does not match student_head_weight "
                         f"{tuple(student_head_weight.shape)}: expected [N, d] and [V, d]")
    if teacher_hidden.dim() != 2 or teacher_head_weight.shape[1] != teacher_hidden.shape[1]:
        raise ValueError(f"teacher_hidden {tuple(teacher_hidden.shape)} does not match teacher_head_weight "
                         f"{tuple(teacher_head_weight.shape)}: expected [N, d_t] and [V, d_t]")
    if teacher_hidden.shape[0] != num_tokens or teacher_head_weight.shape[0] != vocab_size:
        raise ValueError(f"teacher_hidden/teacher_head_weight {tuple(teacher_hidden.shape)}/"
                         f"{tuple(teacher_head_weight.shape)}: need N={num_tokens} tokens and V={vocab_size}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (num_tokens,)):
        raise ValueError(f"mask: expected a bool tensor of shape ({num_tokens},), got {mask.dtype} "
                         f"{tuple(mask.shape)}")


def reduce_per_token(per_token: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Sum, or mean over the kept tokens (all tokens without a mask), of a per-token loss [N]."""
    if mask is not None:
        per_token = per_token * mask
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / (per_token.numel() if mask is None else mask.sum().clamp_min(1))


@kd_implementations.register("reference")
def kd_loss_reference(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                      teacher_head_weight: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None,
                      reduction: str = "mean") -> torch.Tensor:
    """Naive full-vocab KL(teacher || student) over [N, V] logits (the correctness and speed baseline)."""
    check_kd_inputs(student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, temperature, mask,
                    reduction)
    with torch.no_grad():
        teacher_logits = teacher_hidden @ teacher_head_weight.T
    return reduce_per_token(kl_per_token(student_hidden @ student_head_weight.T, teacher_logits, temperature), mask,
                            reduction)


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(q || p) per token [N] from raw logits [N, V], in fp32; the teacher side carries no gradient."""
    log_p = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)
