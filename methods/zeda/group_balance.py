"""ZEDA's group-level balancing loss: load balance over groups of experts instead of single experts.

The paper names the loss but gives no formula; this is the one used here. For one MoE layer with E real and
Z zero experts, router probabilities p_t = softmax over all E + Z logits of token t and top-k sets S_t:

    groups: the real experts split into E/g consecutive groups of g (g = zeda.group_size, 0 means g = E),
            plus one group holding all Z zero experts (they are interchangeable); G = E/g + 1
    F_j = (1 / (T·k)) · sum_t |S_t ∩ group_j|      share of routed slots sent to group j (global batch, no grad)
    P_j = (1 / T) · sum_t sum_{i in group_j} p_{t,i}   mean router probability mass of group j
    L_group = G · sum_j F_j · P_j,  averaged over MoE layers

L_group is 1 when every group gets 1/G of the slots. Inside a group experts may specialize freely, and the zero
group's target share 1/G = g / (E + g) sets how much routed computation is skipped: g = E (the default) balances
real against zero experts, half the slots each, the paper's "skip half the experts".
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def column_groups(num_experts: int, num_zero_experts: int, group_size: int, device: torch.device) -> torch.Tensor:
    """Group id [E + Z] of every router column: real expert i -> i // g, every zero expert -> E // g."""
    size = group_size or num_experts
    real = torch.arange(num_experts, device=device) // size
    return torch.cat([real, real.new_full((num_zero_experts,), num_experts // size)])


def layer_group_balance(logits: torch.Tensor, num_zero_experts: int, group_size: int, top_k: int) -> torch.Tensor:
    """L_group of one layer from its router logits [T, E + Z]."""
    probs = torch.softmax(logits.float(), dim=-1)  # [T, E + Z]
    groups = column_groups(probs.shape[-1] - num_zero_experts, num_zero_experts, group_size, probs.device)
    num_groups = int(groups[-1]) + 1
    with torch.no_grad():
        chosen = groups[probs.topk(top_k, dim=-1).indices].reshape(-1)
        counts = torch.zeros(num_groups, device=probs.device).index_add_(0, chosen, torch.ones_like(chosen).float())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        fraction = counts / counts.sum()
    group_probs = torch.zeros(num_groups, device=probs.device).index_add(0, groups, probs.mean(dim=0))
    return num_groups * (fraction * group_probs).sum()


def group_balance_loss(router_logits: list[torch.Tensor], num_zero_experts: int, group_size: int,
                       top_k: int) -> torch.Tensor:
    """Mean over MoE layers of L_group; `router_logits` holds one [T, E_layer + Z] tensor per layer."""
    return torch.stack([layer_group_balance(logits, num_zero_experts, group_size, top_k)
                        for logits in router_logits]).mean()
