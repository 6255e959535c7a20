"""MoE load-balancing loss computed over the global batch (Qiu et al. 2025, "Demons in the detail").

L_bal = E * sum_i f_i * P_i, averaged over MoE layers, where f_i is the fraction of routed
(token, slot) pairs sent to expert i counted over the *global* batch (all-reduced across data-parallel
ranks, no gradient) and P_i is the mean router probability of expert i on the local tokens.
Counting f over the global batch instead of each micro-batch lets experts specialize by domain.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def global_batch_balance_loss(router_logits: list[torch.Tensor] | tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Average over layers of E * <f, P>; `router_logits` holds one [tokens, E] tensor per MoE layer."""
    losses = []
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)  # [T, E]
        num_experts = probs.shape[-1]
        with torch.no_grad():
            chosen = probs.topk(top_k, dim=-1).indices
            counts = torch.zeros(num_experts, device=probs.device).scatter_add_(
                0, chosen.reshape(-1), torch.ones(chosen.numel(), device=probs.device)
            )
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            fraction = counts / counts.sum()
        losses.append(num_experts * (fraction * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()
