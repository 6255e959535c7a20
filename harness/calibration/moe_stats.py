"""The instrumented MoE block forward: the block's output plus every routing/expert statistic, in one go.

Each routed expert runs once on its tokens (as the reference `MoEView.forward` does), and its output
norms feed `reap` and `ean` on the way; the first `probe_tokens` tokens a layer sees are additionally
run through every expert for the `expert_outputs` similarity.
"""

from __future__ import annotations

import torch

from harness.calibration.stats import MoELayerStats
from harness.calibration.sums import RunningSums
from harness.models.view import MoEView

PROBE_CHUNK_VALUES = 1 << 26


def expert_outputs_sorted(moe: MoEView, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Unweighted outputs [n, d] of rows x_sorted [n, d] grouped by expert, `counts[i]` rows for expert i.

    One `MoEView.expert_forward` call per hit expert, as transformers' eager loop does; a grouped-GEMM
    kernel with this signature would cut the per-expert launches on GPUs.
    """
    chunks = x_sorted.split(counts)
    return torch.cat([moe.expert_forward(expert, chunk) for expert, chunk in enumerate(chunks) if len(chunk)])


def all_expert_output_sums(moe: MoEView, x: torch.Tensor) -> torch.Tensor:
    """sum_t E_i(x_t) for every expert i [E, d] (float64): `MoEView.expert_forward` batched over experts,
    a few experts per batched matmul so the [experts, tokens, 2I] intermediate stays under ~2^26 values."""
    per_expert = x.shape[0] * max(moe.gate_up_proj.shape[1], moe.down_proj.shape[1])
    step = max(1, PROBE_CHUNK_VALUES // per_expert)
    sums = []
    for first in range(0, moe.num_experts, step):
        gate_up = moe.gate_up_proj[first:first + step]  # [e, 2I, d]
        gate, up = torch.matmul(x, gate_up.transpose(1, 2)).chunk(2, dim=-1)  # [e, T, I] each
        outputs = torch.matmul(moe.act_fn(gate) * up, moe.down_proj[first:first + step].transpose(1, 2))
        sums.append(outputs.sum(dim=1, dtype=torch.float64))  # [e, d]
    return torch.cat(sums)


class MoEStatsForward:
    """Replaces one MoE block's forward: same output, and accumulates the layer's `MoELayerStats` sums."""

    def __init__(self, moe: MoEView, probe_tokens: int) -> None:
        num_experts, hidden_size = moe.num_experts, moe.router.shape[1]
        self.moe = moe
        self.probe_budget = probe_tokens
        self.num_tokens = 0
        self.probe_tokens = 0
        per_expert = (num_experts,)
        self.sums = RunningSums({
            "freq": per_expert, "soft": per_expert, "reap": per_expert, "ean": per_expert,
            "logit_gram": (num_experts, num_experts), "probe_output_sum": (num_experts, hidden_size),
        })

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # [T, d]
        logits, weights, ids = self.moe.route(x)  # [T, E], [T, k], [T, k]
        routed, output_norms = self._dispatch(x, weights, ids)
        self._accumulate_routing(logits, weights, ids, output_norms)
        self._probe(x)
        self.num_tokens += x.shape[0]
        return (routed + self.moe.shared_forward(x)).reshape(hidden_states.shape)

    def _dispatch(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted routed output [T, d] and ||E_i(x)||_2 per (token, slot) [T, k], each hit expert run once."""
        flat_ids = ids.reshape(-1)  # [T*k], assignment a = token * k + slot
        order = flat_ids.argsort(stable=True)  # assignments grouped by expert, ascending
        tokens = order // ids.shape[1]
        counts = torch.bincount(flat_ids, minlength=self.moe.num_experts).tolist()
        outputs = expert_outputs_sorted(self.moe, x[tokens], counts)  # [T*k, d], in `order`
        output_norms = torch.empty(flat_ids.shape, dtype=torch.float32, device=x.device)
        output_norms[order] = outputs.float().norm(dim=-1)
        weighted = outputs * weights.reshape(-1)[order, None]
        routed = torch.zeros_like(x).index_add_(0, tokens, weighted.to(x.dtype))
        return routed, output_norms.view_as(ids)

    def _accumulate_routing(self, logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                            output_norms: torch.Tensor) -> None:
        num_experts = self.moe.num_experts
        flat_ids = ids.reshape(-1)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # z, over all experts
        selected = probs.gather(1, ids)  # [T, k]
        soft = (selected / selected.sum(dim=-1, keepdim=True)).reshape(-1)
        reap = (weights.float() * output_norms).reshape(-1)

        def per_expert(values: torch.Tensor) -> torch.Tensor:
            return torch.zeros(num_experts, dtype=torch.float64, device=values.device).index_add_(
                0, flat_ids, values.double())

        self.sums.add("freq", torch.bincount(flat_ids, minlength=num_experts))
        self.sums.add("soft", per_expert(soft))
        self.sums.add("reap", per_expert(reap))
        self.sums.add("ean", per_expert(output_norms.reshape(-1)))
        logits64 = logits.double()
        self.sums.add("logit_gram", logits64.T @ logits64)

    def _probe(self, x: torch.Tensor) -> None:
        """Sum every expert's output over the layer's first `probe_budget` tokens (the shared probe set)."""
        take = min(self.probe_budget - self.probe_tokens, x.shape[0])
        if take <= 0:
            return
        self.sums.add("probe_output_sum", all_expert_output_sums(self.moe, x[:take]))
        self.probe_tokens += take

    def stats(self) -> MoELayerStats:
        sums = self.sums.cpu()
        return MoELayerStats(num_tokens=self.num_tokens, probe_tokens=self.probe_tokens, **sums)
