"""Zero-output experts (ZEDA, arXiv 2605.18643): extra router columns whose experts are parameter-free and output 0.

A MoE block with Z zero experts keeps its E real experts untouched; its router (`mlp.gate`) gains Z columns:
`zero_weight` [Z, d] and `zero_bias` [Z] next to the real rows `weight` [E, d], so the checkpoint keeps
transformers' own names and shapes and only adds two tensors per layer. Logits are [T, E + Z], columns E..E+Z-1
are the zero experts. A slot routed to a zero expert is handed to the experts module as the sentinel index E,
which every transformers experts implementation skips (eager drops index E; grouped_mm / batched_mm mask
sentinel rows when `_is_expert_parallel` is set, which is what that flag controls): it costs no expert FLOPs
and contributes exactly 0, while its routing weight still takes its share of the top-k normalization.

The real-expert probabilities are computed exactly as the original router computes them (softmax over the E
real logits in fp32), and zero experts are scored relative to the same denominator, so with no zero expert
selected the block's output is bit-identical to the original model's. The config records Z as
`num_zero_experts`.

This file imports only torch and transformers. It is also the modeling code of a ZEDA checkpoint: the harness
copies it (with `modeling_slim.py`, whose per-layer expert counts a ZEDA model may carry too) into the directory,
and `Zeda<Stock>` (`ZedaQwen3NextForCausalLM`, `ZedaQwen3NextConfig`, model type `zeda_qwen3_next`) is the family's
stock class with the zero experts installed after construction, made on first access.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

PREFIX = "Zeda"
CONFIG_FIELD = "num_zero_experts"


class ZeroExpertRouter(nn.Module):
    """Top-k router over E real + Z zero experts; returns (logits [T, E+Z], weights [T, k], ids [T, k]) with
    zero-expert slots mapped to the sentinel id E."""

    def __init__(self, router: nn.Module, num_zero_experts: int) -> None:
        super().__init__()
        self.top_k = router.top_k
        self.num_experts = router.num_experts
        self.num_zero_experts = num_zero_experts
        self.norm_topk_prob = getattr(router, "norm_topk_prob", True)  # Mixtral's router always renormalizes
        self.hidden_dim = router.hidden_dim
        self.weight = router.weight
        self.zero_weight = nn.Parameter(router.weight.new_zeros(num_zero_experts, router.weight.shape[1]))
        self.zero_bias = nn.Parameter(router.weight.new_zeros(num_zero_experts))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        real_logits = F.linear(hidden_states, self.weight)  # [T, E]
        zero_logits = F.linear(hidden_states, self.zero_weight, self.zero_bias)  # [T, Z]
        real_probs = torch.softmax(real_logits, dim=-1, dtype=torch.float)
        # log of exp(l_z) over the real softmax's denominator: [real_probs, exp(zero_rel)] ∝ softmax over E + Z.
        zero_rel = zero_logits.float() - torch.logsumexp(real_logits.float(), dim=-1, keepdim=True)
        # Capped at 1 (no overflow): a zero expert above 1 outranks every real one either way.
        zero_scores = zero_rel.clamp(max=0).exp()
        top_scores, ids = torch.topk(torch.cat([real_probs, zero_scores], dim=-1), self.top_k, dim=-1)
        weights = torch.where((ids >= self.num_experts).any(dim=-1, keepdim=True),
                              self._weights_with_zeros(real_probs, zero_rel, ids),
                              self._weights_without_zeros(top_scores, zero_scores))
        ids = ids.clamp(max=self.num_experts)  # every zero expert -> the sentinel the experts module skips
        return torch.cat([real_logits, zero_logits], dim=-1), weights.to(real_logits.dtype), ids

    def _weights_without_zeros(self, top_scores: torch.Tensor, zero_scores: torch.Tensor) -> torch.Tensor:
        """Top-k weights [T, k] of tokens that picked real experts only, in the original router's arithmetic
        (bit-identical when the zero columns carry no probability mass)."""
        if self.norm_topk_prob:
            return top_scores / top_scores.sum(dim=-1, keepdim=True)
        return top_scores / (1.0 + zero_scores.sum(dim=-1, keepdim=True))  # the softmax over all E + Z

    def _weights_with_zeros(self, real_probs: torch.Tensor, zero_rel: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Top-k weights [T, k] in log space, finite however large the zero logits are."""
        log_scores = torch.cat([real_probs.log(), zero_rel], dim=-1)  # [T, E + Z]
        top_log = log_scores.gather(-1, ids)
        if self.norm_topk_prob:
            return torch.softmax(top_log, dim=-1)
        return (top_log - torch.logsumexp(log_scores, dim=-1, keepdim=True)).exp()


def _moe_blocks(model: PreTrainedModel) -> list[tuple[int, nn.Module]]:
    """(decoder layer index, sparse MoE block) of every layer whose MLP has a router `gate` and packed `experts`."""
    return [(index, layer.mlp) for index, layer in enumerate(model.model.layers)
            if hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "experts")]


def zero_expert_routers(model: PreTrainedModel) -> dict[int, ZeroExpertRouter]:
    """Decoder layer index -> zero-expert router, for every MoE layer that has one."""
    return {index: block.gate for index, block in _moe_blocks(model) if isinstance(block.gate, ZeroExpertRouter)}


def install_zero_experts(model: PreTrainedModel, num_zero_experts: int) -> None:
    """Give every MoE layer `num_zero_experts` zero experts whose router columns are zeros (callers initialize
    them), and record the count in the config. The real router rows stay the same Parameter objects."""
    if num_zero_experts < 1:
        raise ValueError(f"num_zero_experts must be >= 1, got {num_zero_experts}")
    if zero_expert_routers(model):
        raise ValueError("the model already has zero experts")
    for _, block in _moe_blocks(model):
        block.gate = ZeroExpertRouter(block.gate, num_zero_experts)
        block.experts._is_expert_parallel = True  # sentinel ids skipped, see the module docstring
    setattr(model.config, CONFIG_FIELD, num_zero_experts)


def install_from_config(model: PreTrainedModel) -> None:
    """The zero experts config.json records, on a freshly built model (before its weights are loaded)."""
    install_zero_experts(model, getattr(model.config, CONFIG_FIELD))


def __getattr__(name: str) -> type:
    if not name.startswith(PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Only inside a checkpoint directory, where modeling_slim.py lies beside this file.
    from .modeling_slim import portable_class

    return portable_class(globals(), PREFIX, name, install_from_config)
