"""Token-chunked KD loss against a cached teacher top-k: student logits [chunk, V] only, grads in the forward.

The loss is the top-k + tail KL defined in cached_reference.py. The driver is the one of
chunked.py (same row chunks, same fp32 head-gradient accumulator, same backward: `_CachedKD` subclasses
`_ChunkedKD` and keeps its argument positions), with the teacher side of each chunk gathered from the
cache instead of computed by a matmul. Memory: O(N*d + V*d + chunk*V + N*k).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slim.kernels.kd_loss.cached_reference import cached_kd_implementations, check_cached_kd_inputs, teacher_tail_mass
from slim.kernels.kd_loss.chunked import _ChunkedKD, chunked_forward, chunked_inputs

# (student_logits [chunk, V] raw, teacher_ids [chunk, k] int64, teacher_logits [chunk, k], temperature,
# grad_scale) -> (KL sum of the chunk in fp32, d loss / d student_logits in the logits' dtype).
CachedChunkStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]]


def torch_cached_chunk_step(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logits: torch.Tensor,
                            temperature: float, grad_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk KL_tail sum and student-logit gradient (cached_reference.py) * scale, on two fp32 [chunk, V]
    buffers. `temperature` is always 1 here (checked by the caller)."""
    log_p = student_logits.float()
    log_p.sub_(torch.logsumexp(log_p, dim=-1, keepdim=True))
    log_q = teacher_logits.float()  # [chunk, k]
    q = log_q.exp()
    tail_q = teacher_tail_mass(q, log_p.shape[1])
    p = log_p.exp()
    kl_sum = torch.dot(q.view(-1), (log_q - log_p.gather(1, teacher_ids)).view(-1))
    log_tail_p = log_p.scatter_(1, teacher_ids, float("-inf")).logsumexp(dim=-1)  # log_p is spent from here
    has_tail = tail_q > 0
    kl_sum += torch.where(has_tail, tail_q * (tail_q.log() - log_tail_p), 0.0).sum()
    tail_ratio = torch.where(has_tail, tail_q / log_tail_p.exp(), 0.0)  # r_q / r_p
    p_support = p.gather(1, teacher_ids)
    grad_logits = p.mul_((1.0 - tail_ratio).unsqueeze(1))  # off S: p (1 - r_q / r_p)
    grad_logits.scatter_(1, teacher_ids, p_support - q)  # on S: p - q
    return kl_sum, grad_logits.mul_(grad_scale).to(student_logits.dtype)


class _CachedKD(_ChunkedKD):
    """Forward as `_ChunkedKD`'s with the teacher chunk read from the cache; its backward is reused as is."""

    @staticmethod
    def forward(ctx, student_hidden: torch.Tensor, teacher_ids: torch.Tensor, student_head_weight: torch.Tensor,
                teacher_logits: torch.Tensor, temperature: float, mask: torch.Tensor | None, reduction: str,
                chunk_size: int, step: CachedChunkStep) -> torch.Tensor:
        def rows_step(rows, student_logits, scale):
            return step(student_logits, teacher_ids[rows].long(), teacher_logits[rows], temperature, scale)

        return chunked_forward(ctx, student_hidden, student_head_weight, mask, reduction, chunk_size, rows_step)


@cached_kd_implementations.register("chunked")
def kd_loss_cached(student_hidden: torch.Tensor, student_head_weight: torch.Tensor, teacher_ids: torch.Tensor,
                   teacher_logits: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None,
                   reduction: str = "mean", chunk_size: int | None = None,
                   step: CachedChunkStep = torch_cached_chunk_step) -> torch.Tensor:
    """Token-chunked KL over the cached teacher top-k + tail; never materializes [N, V] student logits."""
    check_cached_kd_inputs(student_hidden, student_head_weight, teacher_ids, teacher_logits, temperature, mask,
                           reduction)
    chunk, student_hidden, student_head_weight = chunked_inputs(student_hidden, student_head_weight, chunk_size)
    return _CachedKD.apply(student_hidden, teacher_ids.detach(), student_head_weight, teacher_logits.detach(),
                           float(temperature), mask, reduction, chunk, step)
