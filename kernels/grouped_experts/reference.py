"""Reference: one call per hit expert over its contiguous rows of the sorted tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from slim.kernels.grouped_experts import expert_output_implementations


@expert_output_implementations.register("loop")
def expert_outputs_loop(gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                        act_fn: Callable[[torch.Tensor], torch.Tensor], x_sorted: torch.Tensor,
                        counts: torch.Tensor) -> torch.Tensor:
    """Unweighted outputs [n, d] of rows x_sorted [n, d] grouped by expert, counts[i] rows for expert i.

    gate_up_proj [E, 2I, d] holds the gate rows then the up rows, down_proj [E, d, I]; counts [E] sums to n.
    """
    outputs = []
    for expert, rows in enumerate(x_sorted.split(counts.tolist())):
        if len(rows):
            gate, up = F.linear(rows, gate_up_proj[expert]).chunk(2, dim=-1)
            outputs.append(F.linear(act_fn(gate) * up, down_proj[expert]))
    return torch.cat(outputs) if outputs else x_sorted.new_empty(0, down_proj.shape[1])
