"""All experts in two grouped GEMMs (`torch.nn.functional.grouped_mm`, else `torch._grouped_mm`).

The kernel needs torch >= 2.9 on CPU and compute capability >= 8.0 on CUDA (as transformers checks in
`integrations/moe.py`), and 16-byte aligned operands and row strides; elsewhere (e.g. an odd intermediate
size) the loop reference runs instead, so the result never depends on where it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from slim.kernels.grouped_experts import expert_output_implementations
from slim.kernels.grouped_experts.reference import expert_outputs_loop

GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def aligned(*tensors: torch.Tensor) -> bool:
    """Whether every tensor starts on 16 bytes and every non-unit stride spans a multiple of 16 bytes."""
    return all(tensor.data_ptr() % 16 == 0 and all(stride * tensor.element_size() % 16 == 0
                                                   for stride in tensor.stride() if stride != 1)
               for tensor in tensors)


def grouped_mm_fits(gate_up_proj: torch.Tensor, down_proj: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the grouped GEMM kernel runs on these operands (device, availability, alignment)."""
    if GROUPED_MM is None or x.shape[0] == 0:
        return False
    if gate_up_proj.device.type == "cuda" and torch.cuda.get_device_capability(gate_up_proj.device) < (8, 0):
        return False
    intermediate = down_proj.shape[-1] * down_proj.element_size()
    return (gate_up_proj.device.type in ("cpu", "cuda") and intermediate % 16 == 0
            and aligned(gate_up_proj, down_proj, x))


@expert_output_implementations.register("grouped")
def expert_outputs_grouped(gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                           act_fn: Callable[[torch.Tensor], torch.Tensor], x_sorted: torch.Tensor,
                           counts: torch.Tensor) -> torch.Tensor:
    """`expert_outputs_loop` as two grouped GEMMs over offsets cumsum(counts); no host sync on the counts."""
    x = x_sorted.to(gate_up_proj.dtype)
    if not grouped_mm_fits(gate_up_proj, down_proj, x):
        return expert_outputs_loop(gate_up_proj, down_proj, act_fn, x_sorted, counts)
    offsets = counts.cumsum(0, dtype=torch.int32)  # group i is rows [offsets[i-1], offsets[i])
    gate, up = GROUPED_MM(x, gate_up_proj.transpose(1, 2), offs=offsets).chunk(2, dim=-1)  # [n, I] each
    return GROUPED_MM(act_fn(gate) * up, down_proj.transpose(1, 2), offs=offsets).to(x_sorted.dtype)
