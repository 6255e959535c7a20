"""Injection of zero experts into a post-trained MoE, with ZEDA's initialization of their router columns.

The paper does not say how the new router columns start. Here every zero column starts as the mean of the
layer's real router rows plus a bias `zeda.init_bias` (0 by default): its logit is the token's mean real-expert
logit, below the top-k for most tokens, so the adapted model starts close to the original (few skipped slots)
while the columns already receive gradients. All zero columns start equal: zero experts are interchangeable,
and equal columns act as one learned threshold, a token routing k - (number of real logits above it) of its
slots (at most Z) to zero experts.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from slim.harness.compression.modeling_slim import expert_count
from slim.harness.errors import UserError
from slim.harness.models.families import model_families, softmax_router_families
from slim.harness.models.portable import family_of
from slim.methods.zeda.modeling_zeda import install_zero_experts, zero_expert_routers
from slim.methods.zeda.options import ZedaConfig


def moe_expert_counts(config: PretrainedConfig) -> list[int]:
    """Real experts of each MoE layer, from config.json alone (per-layer counts when a global budget set them)."""
    per_layer = getattr(config, "num_experts_per_layer", None)
    return sorted({count for count in per_layer if count}) if per_layer else [expert_count(config)]


def check_injection(cfg: ZedaConfig, config: PretrainedConfig) -> None:
    """Refuse, in one line naming the field, a family whose router is not a plain softmax top-k (the zero experts
    extend that softmax), a zero-expert count below 1 or a group size that does not divide every MoE layer's
    expert count."""
    family = family_of(config.model_type)
    if not model_families.get(family, "zeda.teacher model_type").softmax_router:
        raise UserError(f"zeda.teacher: family {family!r} does not route by a plain softmax top-k, which ZEDA's zero "
                        f"experts extend; allowed families: {', '.join(softmax_router_families())}")
    if cfg.num_zero_experts < 1:
        raise UserError(f"zeda.num_zero_experts: must be >= 1, got {cfg.num_zero_experts}")
    counts = moe_expert_counts(config)
    if cfg.group_size < 0 or any(cfg.group_size and count % cfg.group_size for count in counts):
        divisors = [size for size in range(1, min(counts) + 1) if all(count % size == 0 for count in counts)]
        raise UserError(f"zeda.group_size: {cfg.group_size} does not divide the expert count "
                        f"({'/'.join(map(str, counts))} per MoE layer); allowed: 0 (one group), "
                        f"{', '.join(map(str, divisors))}")


@torch.no_grad()
def inject_zero_experts(model: PreTrainedModel, cfg: ZedaConfig) -> None:
    """Give every MoE layer of `model` `cfg.num_zero_experts` zero experts, initialized as the module docstring says."""
    check_injection(cfg, model.config)
    if getattr(model.config, "num_zero_experts", None):
        raise UserError(f"zeda.teacher: {cfg.teacher} already has zero experts; ZEDA starts from a static MoE")
    install_zero_experts(model, cfg.num_zero_experts)
    for router in zero_expert_routers(model).values():
        router.zero_weight.copy_(router.weight.mean(dim=0).expand_as(router.zero_weight))
        router.zero_bias.fill_(cfg.init_bias)
