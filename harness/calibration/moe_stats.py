"""The instrumented MoE block forward: the block's output plus every routing/expert statistic, in one go.

The block routes once and sorts its (token, expert) assignments by expert; all routed expert outputs come
from one `slim.kernels.grouped_experts` call on the sorted tokens (grouped GEMMs by default, the per-expert loop
as the reference), and the per-expert sums (`freq`, `soft`, `reap`, `ean`) are segment sums over that
sorted order. The first `probe_tokens` tokens a layer sees are additionally run through every expert for
the `expert_outputs` similarity.
"""

from __future__ import annotations

import torch

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.calibration.sums import RunningSums
from slim.harness.models.view import MoEView
from slim.kernels.grouped_experts import ExpertOutputs, expert_outputs_grouped

PROBE_CHUNK_VALUES = 1 << 26


def all_expert_output_sums(moe: MoEView, x: torch.Tensor) -> torch.Tensor:
    """sum_t E_i(x_t) for every expert i [E, d] (float64): `MoEView.expert_forward` batched over experts,
    a few experts per batched matmul so the [experts, tokens, 2I] intermediate stays under ~2^26 values.

    The down projection is linear, so it runs once on the summed SwiGLU activations instead of per token. A
    family's own experts (`MoEView.expert_fn`) run one expert at a time.
    """
    if moe.expert_fn is not None:
        return torch.stack([moe.expert_forward(expert, x).sum(dim=0, dtype=torch.float64)
                            for expert in range(moe.num_experts)])
    per_expert = x.shape[0] * max(moe.gate_up_proj.shape[1], moe.down_proj.shape[1])
    step = max(1, PROBE_CHUNK_VALUES // per_expert)
    sums = []
    for first in range(0, moe.num_experts, step):
        gate_up = moe.gate_up_proj[first:first + step]  # [e, 2I, d]
        gate, up = torch.matmul(x, gate_up.transpose(1, 2)).chunk(2, dim=-1)  # [e, T, I] each
        activation_sums = (moe.act_fn(gate) * up).sum(dim=1, dtype=torch.float64)  # [e, I]
        down = moe.down_proj[first:first + step].double()  # [e, d, I]
        sums.append(torch.einsum("edi,ei->ed", down, activation_sums))
    return torch.cat(sums)


class MoEStatsForward:
    """Replaces one MoE block's forward: same output, and accumulates the layer's `MoELayerStats` sums.

    `expert_outputs` computes the routed experts (`slim.kernels.grouped_experts`; the grouped GEMMs by default).
    """

    def __init__(self, moe: MoEView, probe_tokens: int, expert_outputs: ExpertOutputs = expert_outputs_grouped) -> None:
        num_experts, hidden_size = moe.num_experts, moe.router.shape[1]
        self.moe = moe
        self.expert_outputs = expert_outputs
        self.probe_budget = probe_tokens
        self.num_tokens = 0
        self.probe_tokens = 0
        # logits without a bias are linear in x, so sum_x l l^T = W (sum_x x x^T) W^T: the smaller of the two Gram
        # matrices is summed (a router with a logit bias sums the logits' own)
        self.gram_of_inputs = hidden_size < num_experts and moe.router_bias is None
        gram_size = hidden_size if self.gram_of_inputs else num_experts
        per_expert = (num_experts,)
        self.sums = RunningSums({
            "freq": per_expert, "soft": per_expert, "reap": per_expert, "ean": per_expert,
            "gram": (gram_size, gram_size), "probe_output_sum": (num_experts, hidden_size),
        })

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # [T, d]
        logits, weights, ids = self.moe.route(x)  # [T, E], [T, k], [T, k]
        expert_ids, order = ids.reshape(-1).sort(stable=True)  # [T*k]: assignment a = token * k + slot, by expert
        tokens = order // ids.shape[1]
        counts = torch.bincount(expert_ids, minlength=self.moe.num_experts)  # [E]
        outputs = self.moe.sorted_expert_outputs(x[tokens], counts, self.expert_outputs)  # [T*k, d], by expert
        sorted_weights = weights.reshape(-1)[order]
        routed = torch.zeros_like(x).index_add_(0, tokens, (outputs * sorted_weights[:, None]).to(x.dtype))
        self._accumulate(logits, ids, order, expert_ids, counts, sorted_weights, outputs.float().norm(dim=-1))
        gram_rows = (x if self.gram_of_inputs else logits).double()  # [T, min(d, E)]
        self.sums.add("gram", gram_rows.T @ gram_rows)
        self._probe(x)
        self.num_tokens += x.shape[0]
        output = (routed + self.moe.shared_forward(x)).reshape(hidden_states.shape)
        return (output, weights) if self.moe.returns_weights else output

    def _accumulate(self, logits: torch.Tensor, ids: torch.Tensor, order: torch.Tensor, expert_ids: torch.Tensor,
                    counts: torch.Tensor, sorted_weights: torch.Tensor, output_norms: torch.Tensor) -> None:
        """Add this batch's routing sums; `order`, `expert_ids`, `sorted_weights` and `output_norms`
        (||E_i(x)||_2) are per assignment [T*k] in expert-sorted order."""
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # z, over all experts
        selected = probs.gather(1, ids)  # [T, k]
        soft = (selected / selected.sum(dim=-1, keepdim=True)).reshape(-1)[order]

        def segment_sums(values: torch.Tensor) -> torch.Tensor:
            return torch.zeros(self.moe.num_experts, dtype=torch.float64, device=values.device).index_add_(
                0, expert_ids, values.double())

        self.sums.add("freq", counts)
        self.sums.add("soft", segment_sums(soft))
        self.sums.add("reap", segment_sums(sorted_weights.float() * output_norms))
        self.sums.add("ean", segment_sums(output_norms))

    def _probe(self, x: torch.Tensor) -> None:
        """Sum every expert's output over the layer's first `probe_budget` tokens (the shared probe set)."""
        take = min(self.probe_budget - self.probe_tokens, x.shape[0])
        if take <= 0:
            return
        self.sums.add("probe_output_sum", all_expert_output_sums(self.moe, x[:take]))
        self.probe_tokens += take

    def stats(self) -> MoELayerStats:
        sums = self.sums.cpu()
        gram = sums.pop("gram")
        if self.gram_of_inputs:
            router = self.moe.router.detach().double().cpu()  # [E, d]
            gram = router @ gram @ router.T
        return MoELayerStats(num_tokens=self.num_tokens, probe_tokens=self.probe_tokens, logit_gram=gram, **sums)
