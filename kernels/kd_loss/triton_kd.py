"""Fused Triton step for the chunked KD loss: one kernel per chunk instead of ~10 torch passes.

One program per token row streams the row's student and teacher logits twice: pass 1 keeps online
log-sum-exps (at temperature T), pass 2 accumulates the row's KL and overwrites the student logits in
place with (p - q) / T * scale in their own dtype, so no fp32 [chunk, V] buffer is ever allocated.
Registered as "triton" only when triton imports. The kernel runs on CUDA tensors, or on CPU tensors
under TRITON_INTERPRET=1; other CPU tensors take the torch step, so the path follows the device, not
what is installed.
"""

from __future__ import annotations

import os

import torch

from slim.kernels.kd_loss import kd_implementations
from slim.kernels.kd_loss.chunked import kd_loss_chunked, torch_chunk_step
from slim.kernels.kd_loss.fused_head import head_implementations, head_loss_chunked

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

BLOCK_SIZE = 4096


def kernel_runs_on(tensor: torch.Tensor) -> bool:
    """True where the Triton kernel can run: CUDA tensors, or anything under TRITON_INTERPRET=1."""
    return triton is not None and (tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _kd_step_kernel(student_ptr, teacher_ptr, kl_ptr, vocab_size, student_stride, teacher_stride,
                        inv_temperature, grad_factor, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        student_row = student_ptr + row * student_stride
        teacher_row = teacher_ptr + row * teacher_stride
        max_s = float("-inf")
        sum_s = 0.0
        max_t = float("-inf")
        sum_t = 0.0
        for start in range(0, vocab_size, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            valid = offsets < vocab_size
            s = tl.load(student_row + offsets, mask=valid, other=float("-inf")).to(tl.float32) * inv_temperature
            t = tl.load(teacher_row + offsets, mask=valid, other=float("-inf")).to(tl.float32) * inv_temperature
            new_max_s = tl.maximum(max_s, tl.max(s, 0))
            new_max_t = tl.maximum(max_t, tl.max(t, 0))
            sum_s = sum_s * tl.exp(max_s - new_max_s) + tl.sum(tl.exp(s - new_max_s), 0)
            sum_t = sum_t * tl.exp(max_t - new_max_t) + tl.sum(tl.exp(t - new_max_t), 0)
            max_s = new_max_s
            max_t = new_max_t
        lse_s = max_s + tl.log(sum_s)
        lse_t = max_t + tl.log(sum_t)
        kl = 0.0
        for start in range(0, vocab_size, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            valid = offsets < vocab_size
            log_p = tl.load(student_row + offsets, mask=valid, other=0.0).to(tl.float32) * inv_temperature - lse_s
            log_q = tl.load(teacher_row + offsets, mask=valid, other=0.0).to(tl.float32) * inv_temperature - lse_t
            q = tl.exp(log_q)
            kl += tl.sum(tl.where(valid, q * (log_q - log_p), 0.0), 0)
            grad = (tl.exp(log_p) - q) * grad_factor
            tl.store(student_row + offsets, grad.to(student_ptr.dtype.element_ty), mask=valid)
        tl.store(kl_ptr + row, kl)


def triton_chunk_step(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      grad_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ChunkStep: KL sum in fp32; the gradient overwrites student_logits in place (its dtype)."""
    num_rows, vocab_size = student_logits.shape
    assert student_logits.stride(1) == 1 and teacher_logits.stride(1) == 1, "logits rows must be contiguous"
    kl_rows = torch.empty(num_rows, dtype=torch.float32, device=student_logits.device)
    _kd_step_kernel[(num_rows,)](student_logits, teacher_logits, kl_rows, vocab_size, student_logits.stride(0),
                                 teacher_logits.stride(0), 1.0 / temperature, grad_scale / temperature,
                                 BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(vocab_size)), num_warps=8)
    return kl_rows.sum(), student_logits


if triton is not None:

    @kd_implementations.register("triton")
    def kd_loss_triton(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                       teacher_head_weight: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None,
                       reduction: str = "mean", chunk_size: int | None = None) -> torch.Tensor:
        """Chunked KL(teacher || student) with the fused Triton softmax/KL/gradient step (CUDA)."""
        step = triton_chunk_step if kernel_runs_on(student_hidden) else torch_chunk_step
        return kd_loss_chunked(student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, temperature,
                               mask, reduction, chunk_size, step)

    @head_implementations.register("triton")
    def head_loss_triton(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor | None,
                         student_head_weight: torch.Tensor, teacher_head_weight: torch.Tensor | None,
                         **options) -> tuple[torch.Tensor, torch.Tensor]:
        """LM + KD in one chunked head pass, with the fused Triton KD step (CUDA)."""
        step = triton_chunk_step if kernel_runs_on(student_hidden) else torch_chunk_step
        return head_loss_chunked(student_hidden, teacher_hidden, student_head_weight, teacher_head_weight,
                                 kd_step=step, **options)
