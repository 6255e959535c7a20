"""Token-chunked KD loss: never holds the full [N, V] logits; gradients are computed in the forward.

Liger-style: for each chunk of kept tokens the student and teacher logits [chunk, V] are computed, turned
(in fp32, in place) into the chunk's KL sum and the gradient w.r.t. the raw student logits
(p - q) / T * scale, and folded at once into grad_hidden [N, d] and an fp32 grad_head_weight accumulator
[V, d]. Backward only scales the stored gradients by grad_output. Memory: O(N*d + V*d + chunk*V), which
is O(N*d + V*d) with the default chunk (proportional to d).
Matmuls run in the input dtype (as the reference's do); the per-chunk step is pluggable so a fused
kernel (triton_kd.py) can replace the torch one. Conventions (KL, no T^2, mask, frozen teacher) are
those of reference.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from slim.kernels.kd_loss import kd_implementations
from slim.kernels.kd_loss.reference import check_kd_inputs

# (student_logits, teacher_logits, temperature, grad_scale) -> (KL sum of the chunk in fp32,
# d loss / d student_logits in the logits' dtype). Logits are raw [chunk, V] matmul outputs in the input
# dtype, owned by the step (it may overwrite them); softmax and KL run in fp32.
ChunkStep = Callable[[torch.Tensor, torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]]

MIN_CHUNK_ROWS = 256


def default_chunk_size(hidden_size: int) -> int:
    """Largest power of two <= hidden_size / 4, and at least MIN_CHUNK_ROWS: 512 rows at d = 2048.

    Each chunk pays one read-modify-write of the fp32 [V, d] weight-gradient accumulator, which its
    matmuls (~8 * chunk * V * d flops) must amortize, so chunks should not be much smaller; and its
    [chunk, V] buffers (~4 bytes per element with the Triton step, ~20 with the torch one) should stay
    within a small multiple of that [V, d] gradient, so they should not be much larger. Tying the chunk to
    d keeps both, whatever V is. Measured on an H100 (bench/kd_loss.py, N=4096, d=2048, bf16): 512 rows
    met both targets with the Triton step, 256 was slower and 1024 used more memory. The floor keeps narrow
    models from being chunk-bound: at d = 96, d / 4 is 16 rows, 128 chunks per call, and a 256-row floor made
    the tiny distillation step 0.74x as long (issue 15).
    """
    return max(MIN_CHUNK_ROWS, 1 << max(0, (hidden_size // 4).bit_length() - 1))


def torch_chunk_step(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     grad_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk KL sum and student-logit gradient in plain torch, in place to keep ~3 fp32 [chunk, V] buffers."""
    log_p, log_q = student_logits.float(), teacher_logits.float()
    if temperature != 1.0:
        log_p.div_(temperature)
        log_q.div_(temperature)
    log_p.sub_(torch.logsumexp(log_p, dim=-1, keepdim=True))
    log_q.sub_(torch.logsumexp(log_q, dim=-1, keepdim=True))
    q = log_q.exp()
    log_ratio = log_q.sub_(log_p)
    kl_sum = torch.dot(q.view(-1), log_ratio.view(-1))
    grad_logits = log_p.exp_().sub_(q).mul_(grad_scale / temperature)  # (p - q) / T * scale
    return kl_sum, grad_logits.to(student_logits.dtype)


def _row_chunks(mask: torch.Tensor | None, num_tokens: int, chunk_size: int) -> Iterator[slice | torch.Tensor]:
    """Row selectors over the kept tokens only, so masked tokens cost nothing and no chunk is empty."""
    if mask is None:
        for start in range(0, num_tokens, chunk_size):
            yield slice(start, start + chunk_size)
        return
    kept = mask.nonzero().squeeze(1)
    yield from kept.split(chunk_size)


def _add_matmul_(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """accumulator += left @ right, accumulating in the accumulator's dtype (fp32) for any input dtype."""
    if left.dtype == accumulator.dtype:
        accumulator.addmm_(left, right)
    else:
        accumulator.add_(left @ right)


# (kept rows of this chunk, raw student logits [chunk, V], grad_scale) -> (KL sum, d loss / d student logits).
RowsStep = Callable[[slice | torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def chunked_forward(ctx, student_hidden: torch.Tensor, student_head_weight: torch.Tensor, mask: torch.Tensor | None,
                    reduction: str, chunk_size: int, rows_step: RowsStep) -> torch.Tensor:
    """The chunk loop shared by every chunked head-loss autograd function: student logits per chunk of kept rows,
    the loss sums and logit gradients supplied by `rows_step` (None when nothing needs a gradient), gradients
    folded into grad_hidden and an fp32 head accumulator and saved for backward; returns the (mean or sum) loss."""
    num_tokens = student_hidden.shape[0]
    num_kept = num_tokens if mask is None else int(mask.sum())
    scale = 1.0 / max(num_kept, 1) if reduction == "mean" else 1.0
    grad_hidden = torch.zeros_like(student_hidden) if ctx.needs_input_grad[0] else None
    grad_weight = (torch.zeros(student_head_weight.shape, dtype=torch.float32, device=student_head_weight.device)
                   if ctx.needs_input_grad[2] else None)
    kl_total = torch.zeros((), dtype=torch.float32, device=student_hidden.device)
    for rows in _row_chunks(mask, num_tokens, chunk_size):
        hidden = student_hidden[rows]  # [c, d]
        kl_sum, grad_logits = rows_step(rows, hidden @ student_head_weight.T, scale)  # grad_logits [c, V]
        kl_total = kl_total + kl_sum  # a scalar, or one sum per loss term (fused_head.py)
        if grad_logits is None:  # nothing needs a gradient
            continue
        if grad_hidden is not None:
            grad_hidden[rows] = grad_logits @ student_head_weight
        if grad_weight is not None:
            _add_matmul_(grad_weight, grad_logits.T, hidden)
    if grad_weight is not None:
        grad_weight = grad_weight.to(student_head_weight.dtype)
    ctx.save_for_backward(grad_hidden, grad_weight)
    return kl_total * scale


class _ChunkedKD(torch.autograd.Function):
    """Forward computes loss and student gradients chunk by chunk; backward scales them by grad_output."""

    @staticmethod
    def forward(ctx, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                teacher_head_weight: torch.Tensor, temperature: float, mask: torch.Tensor | None, reduction: str,
                chunk_size: int, step: ChunkStep) -> torch.Tensor:
        def rows_step(rows, student_logits, scale):
            return step(student_logits, teacher_hidden[rows] @ teacher_head_weight.T, temperature, scale)

        return chunked_forward(ctx, student_hidden, student_head_weight, mask, reduction, chunk_size, rows_step)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = scaled_saved_grads(ctx, grad_output)
        return grad_hidden, None, grad_weight, None, None, None, None, None, None


def scaled_saved_grads(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (grad_hidden, grad_head_weight) that `chunked_forward` saved, times the loss's incoming gradient."""
    grad_hidden, grad_weight = ctx.saved_tensors
    if not torch.equal(grad_output, torch.ones_like(grad_output)):
        grad_hidden = None if grad_hidden is None else grad_hidden * grad_output.to(grad_hidden.dtype)
        grad_weight = None if grad_weight is None else grad_weight * grad_output.to(grad_weight.dtype)
    return grad_hidden, grad_weight


def chunked_inputs(student_hidden: torch.Tensor, student_head_weight: torch.Tensor, chunk_size: int | None
                   ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(rows per chunk, student hidden, student head) for a chunked KD autograd function: `chunk_size` checked
    (default from d), and the student tensors detached under no_grad, since `needs_input_grad` ignores no_grad
    and the forward would otherwise pay for the gradient matmuls."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    chunk = chunk_size or default_chunk_size(student_hidden.shape[1])
    if not torch.is_grad_enabled():
        student_hidden, student_head_weight = student_hidden.detach(), student_head_weight.detach()
    return chunk, student_hidden, student_head_weight


@kd_implementations.register("chunked")
def kd_loss_chunked(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                    teacher_head_weight: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None,
                    reduction: str = "mean", chunk_size: int | None = None,
                    step: ChunkStep = torch_chunk_step) -> torch.Tensor:
    """Token-chunked KL(teacher || student), grads computed in forward; never materializes [N, V] logits."""
    check_kd_inputs(student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, temperature, mask,
                    reduction)
    chunk, student_hidden, student_head_weight = chunked_inputs(student_hidden, student_head_weight, chunk_size)
    return _ChunkedKD.apply(student_hidden, teacher_hidden.detach(), student_head_weight,
                            teacher_head_weight.detach(), float(temperature), mask, reduction, chunk, step)
