"""One pass over an LM head for both of its loss terms: cross entropy on the labels and KD from a teacher.

SlimQwen eq 12 puts two terms on every head: LM + KD on the backbone's, MTP-LM + MTP-KD on each MTP depth.
Computed apart, each term builds its own [N, V] student logits and runs the head matmul once more.
`head_loss_chunked` computes the student logits once per chunk of rows and returns
lm_weight * L_LM + kd_weight * L_KD as one differentiable scalar, with the two terms' values beside it
(detached, for logging). The weights are the loss mix's coefficients at this step (slim.methods.losses), so the
gradients of both terms are folded into one [N, d] and one fp32 [V, d] buffer in the forward, as in
chunked.py. Full [N, V] logits never exist; memory is O(N*d + V*d + chunk*V).

Every implementation has the signature of `head_loss_reference` (naive full logits, autograd) and is
registered in `head_implementations` under the name of the KD kernel whose per-chunk KD step it uses
("reference", "chunked", "triton"). Either term may be absent: `labels=None` (no LM term) or
`teacher_hidden=None` (no KD term); its value is then 0. Conventions (KL not soft cross entropy, no T^2,
fp32 softmax, `mask` keeps rows, "mean" over kept rows, frozen teacher) are those of reference.py; the LM
term is the plain cross entropy at temperature 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from slim.harness.registry import Registry
from slim.kernels.kd_loss.chunked import (
    ChunkStep,
    chunked_forward,
    chunked_inputs,
    scaled_saved_grads,
    torch_chunk_step,
)
from slim.kernels.kd_loss.reference import check_kd_inputs, kl_per_token, reduce_per_token

# (student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, *, labels, lm_weight, kd_weight,
# temperature, mask, reduction[, chunk_size]) -> (weighted total, values [2] = (L_LM, L_KD), detached).
HeadLoss = Callable[..., tuple[torch.Tensor, torch.Tensor]]

head_implementations: Registry[HeadLoss] = Registry.of_group("slim.head_kernels")


def check_head_inputs(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor | None,
                      student_head_weight: torch.Tensor, teacher_head_weight: torch.Tensor | None,
                      labels: torch.Tensor | None, temperature: float, mask: torch.Tensor | None,
                      reduction: str) -> None:
    """Raise ValueError naming the argument when there is no term, or a term's inputs are malformed."""
    if labels is None and teacher_hidden is None:
        raise ValueError("labels and teacher_hidden are both None: the head has no loss term")
    if teacher_hidden is not None:
        check_kd_inputs(student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, temperature, mask,
                        reduction)
    else:  # the same checks on the student side alone
        check_kd_inputs(student_hidden, student_hidden, student_head_weight, student_head_weight, temperature, mask,
                        reduction)
    if labels is not None and (labels.dtype != torch.long or tuple(labels.shape) != (student_hidden.shape[0],)):
        raise ValueError(f"labels: expected an int64 tensor of shape ({student_hidden.shape[0]},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")


@head_implementations.register("reference")
def head_loss_reference(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor | None,
                        student_head_weight: torch.Tensor, teacher_head_weight: torch.Tensor | None, *,
                        labels: torch.Tensor | None, lm_weight: float, kd_weight: float, temperature: float = 1.0,
                        mask: torch.Tensor | None = None, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Both terms from the full [N, V] student logits, differentiated by autograd (the correctness baseline)."""
    check_head_inputs(student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, labels, temperature,
                      mask, reduction)
    logits = student_hidden @ student_head_weight.T
    zero = logits.new_zeros((), dtype=torch.float32)
    lm = (zero if labels is None
          else reduce_per_token(F.cross_entropy(logits.float(), labels, reduction="none"), mask, reduction))
    kd = zero
    if teacher_hidden is not None:
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_head_weight.T
        kd = reduce_per_token(kl_per_token(logits, teacher_logits, temperature), mask, reduction)
    return lm_weight * lm + kd_weight * kd, torch.stack([lm, kd]).detach()


def cross_entropy_chunk_step(student_logits: torch.Tensor, labels: torch.Tensor, grad_scale: float,
                             with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy sum of a chunk in fp32 and, when `with_grad`, (softmax - one_hot) * scale in fp32.
    Leaves `student_logits` unchanged (a KD step may use it after)."""
    logits = student_logits.float()  # the same tensor when already fp32: only out-of-place ops below
    log_normalizer = torch.logsumexp(logits, dim=-1)
    ce_sum = (log_normalizer - logits.gather(1, labels.unsqueeze(1)).squeeze(1)).sum()
    if not with_grad:
        return ce_sum, None
    grad = (logits - log_normalizer.unsqueeze(1)).exp_()
    grad[torch.arange(labels.shape[0], device=labels.device), labels] -= 1.0
    return ce_sum, grad.mul_(grad_scale)


def lm_kd_chunk_step(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                     lm_scale: float, kd_scale: float, with_grad: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(CE sum, KL sum, gradient) of a chunk at temperature 1 from one student log-softmax, in place on three
    fp32 [chunk, V] buffers: gradient = (lm_scale + kd_scale) p - kd_scale q - lm_scale one_hot."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    log_p = student_logits.float()
    log_p.sub_(torch.logsumexp(log_p, dim=-1, keepdim=True))
    ce_sum = -log_p[rows, labels].sum()
    log_q = teacher_logits.float()
    log_q.sub_(torch.logsumexp(log_q, dim=-1, keepdim=True))
    q = log_q.exp()
    kl_sum = torch.dot(q.view(-1), log_q.sub_(log_p).view(-1))
    if not with_grad:
        return ce_sum, kl_sum, None
    grad = log_p.exp_().mul_(lm_scale + kd_scale).sub_(q.mul_(kd_scale))
    grad[rows, labels] -= lm_scale
    return ce_sum, kl_sum, grad


class _FusedHead(torch.autograd.Function):
    """Forward: both terms chunk by chunk, their weighted gradients folded in; backward scales them."""

    @staticmethod
    def forward(ctx, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor | None,
                student_head_weight: torch.Tensor, teacher_head_weight: torch.Tensor | None,
                labels: torch.Tensor | None, lm_weight: float, kd_weight: float, temperature: float,
                mask: torch.Tensor | None, reduction: str, chunk_size: int,
                kd_step: ChunkStep) -> tuple[torch.Tensor, torch.Tensor]:
        with_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]

        def rows_step(rows, student_logits, scale):
            sums = torch.zeros(2, dtype=torch.float32, device=student_logits.device)
            if labels is not None and teacher_hidden is not None and temperature == 1.0 and kd_step is torch_chunk_step:
                sums[0], sums[1], grad = lm_kd_chunk_step(student_logits, teacher_hidden[rows] @ teacher_head_weight.T,
                                                          labels[rows], lm_weight * scale, kd_weight * scale, with_grad)
                return sums, None if grad is None else grad.to(student_logits.dtype)
            grad = None
            if labels is not None:  # before the KD step, which may overwrite the logits
                sums[0], grad = cross_entropy_chunk_step(student_logits, labels[rows], lm_weight * scale, with_grad)
            if teacher_hidden is not None:
                sums[1], kd_grad = kd_step(student_logits, teacher_hidden[rows] @ teacher_head_weight.T,
                                           temperature, kd_weight * scale)
                grad = kd_grad if grad is None else grad.add_(kd_grad)
            return sums, None if grad is None or not with_grad else grad.to(student_logits.dtype)

        values = chunked_forward(ctx, student_hidden, student_head_weight, mask, reduction, chunk_size, rows_step)
        ctx.mark_non_differentiable(values)
        return lm_weight * values[0] + kd_weight * values[1], values

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_values: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = scaled_saved_grads(ctx, grad_total)
        return grad_hidden, None, grad_weight, *([None] * 9)


@head_implementations.register("chunked")
def head_loss_chunked(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor | None,
                      student_head_weight: torch.Tensor, teacher_head_weight: torch.Tensor | None, *,
                      labels: torch.Tensor | None, lm_weight: float, kd_weight: float, temperature: float = 1.0,
                      mask: torch.Tensor | None = None, reduction: str = "mean", chunk_size: int | None = None,
                      kd_step: ChunkStep = torch_chunk_step) -> tuple[torch.Tensor, torch.Tensor]:
    """Both terms in one chunked pass over the head: student logits once per chunk, never [N, V] at once."""
    check_head_inputs(student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, labels, temperature,
                      mask, reduction)
    chunk, student_hidden, student_head_weight = chunked_inputs(student_hidden, student_head_weight, chunk_size)
    detached = [None if tensor is None else tensor.detach() for tensor in (teacher_hidden, teacher_head_weight)]
    return _FusedHead.apply(student_hidden, detached[0], student_head_weight, detached[1], labels, float(lm_weight),
                            float(kd_weight), float(temperature), mask, reduction, chunk, kd_step)
