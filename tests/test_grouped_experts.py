"""slim.kernels.grouped_experts: the grouped-GEMM expert outputs equal the per-expert loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slim.kernels.grouped_experts import expert_output_implementations, expert_outputs_grouped, expert_outputs_loop
from slim.kernels.grouped_experts.grouped import grouped_mm_fits


def sorted_problem(num_experts: int, rows: int, dtype: torch.dtype,
                   intermediate: int = 16) -> tuple[torch.Tensor, ...]:
    """Weights [E, 2I, d] / [E, d, I], rows [rows, d] and counts [E] with every third expert never hit."""
    generator = torch.Generator().manual_seed(0)
    hidden = 24
    gate_up = torch.randn(num_experts, 2 * intermediate, hidden, generator=generator).to(dtype)
    down = torch.randn(num_experts, hidden, intermediate, generator=generator).to(dtype)
    hit = torch.arange(num_experts)[torch.arange(num_experts) % 3 != 0]
    expert_ids = hit[torch.randint(0, len(hit), (rows,), generator=generator)].sort().values
    x = torch.randn(rows, hidden, generator=generator).to(dtype)
    return gate_up, down, x, torch.bincount(expert_ids, minlength=num_experts)


@pytest.mark.parametrize(("dtype", "tolerance", "intermediate"),
                         [(torch.float32, 1e-5, 16), (torch.bfloat16, 2e-2, 16), (torch.float32, 1e-5, 10)])
def test_grouped_outputs_equal_loop_reference(dtype: torch.dtype, tolerance: float, intermediate: int) -> None:
    """64 experts, 333 rows, a third of the experts without rows: grouped == loop, row by row; an
    intermediate size off the kernel's 16-byte alignment (10 floats) gives the same through the fallback."""
    gate_up, down, x, counts = sorted_problem(64, 333, dtype, intermediate)
    assert (counts == 0).any()
    assert grouped_mm_fits(gate_up, down, x) == (intermediate == 16)
    expected = expert_outputs_loop(gate_up, down, F.silu, x, counts)
    got = expert_outputs_grouped(gate_up, down, F.silu, x, counts)
    assert got.shape == expected.shape == x.shape and got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_loop_reference_equals_expert_by_expert_swiglu() -> None:
    """Row r of the loop output is down_e (silu(gate_e x_r) * up_e x_r) for the expert e that owns row r."""
    gate_up, down, x, counts = sorted_problem(5, 17, torch.float64)
    owner = torch.repeat_interleave(torch.arange(5), counts)
    expected = torch.stack([down[e] @ (F.silu(gate_up[e, :16] @ row) * (gate_up[e, 16:] @ row))
                            for e, row in zip(owner.tolist(), x, strict=True)])
    torch.testing.assert_close(expert_outputs_loop(gate_up, down, F.silu, x, counts), expected)


def test_no_rows_give_an_empty_output() -> None:
    gate_up, down, x, counts = sorted_problem(4, 0, torch.float32)
    for name in ("loop", "grouped"):
        assert expert_output_implementations.get(name)(gate_up, down, F.silu, x, counts).shape == (0, 24)
