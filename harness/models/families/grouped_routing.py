"""Group-limited sigmoid routing, shared by DeepSeek-V3 and GLM-4.5 (their transformers routers are the same code).

A router scores each expert with sigmoid(logit); for selection only, `e_score_correction_bias` is added. Experts
form `n_group` contiguous groups of E / n_group; a token keeps its `topk_group` groups with the best sum of their two
best biased scores and picks its top-k among them; the weights are the unbiased scores of the picked experts,
renormalized when `norm_topk_prob`, times `routed_scaling_factor`.

The view routes through the model's own router, so calibration statistics are the scores the model routes with. A
cut keeps the selection bias with the router rows it keeps (slim.harness.compression.experts). After a cut the
kept experts, in their original order, form the groups again, E' / n_group each, as the released routing lays
them out: so E' must split into n_group groups of at least two (the group score takes two), and top-k must fit in
`topk_group` groups. A cut that breaks this is refused in one line naming the rule. The first
`first_k_dense_replace` layers are dense MLPs, never merged with routed experts; a depth cut keeps them a prefix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from slim.harness.config.schema import ModelConfig
from slim.harness.errors import UserError
from slim.harness.models.families import ModelFamily, require
from slim.harness.models.view import LayerView, attention_layer_view, decoder_view, moe_view, own_router


def check_groups(config: PretrainedConfig, kept: Sequence[int], top_k: int) -> None:
    """Every MoE layer's expert count must re-form `n_group` equal groups of two or more that hold top-k."""
    groups, best_groups = config.n_group, config.topk_group
    for count in sorted(set(kept)):
        if count % groups or count // groups < 2:
            raise UserError(f"compress.experts.num_experts: {count} experts is not allowed; allowed: a multiple of "
                            f"model n_group={groups} with at least 2 per group (group-limited routing re-forms "
                            f"{groups} equal groups from the kept experts)")
        if top_k > best_groups * (count // groups):
            raise UserError(f"compress.experts.top_k: {top_k} is not allowed; allowed: 1.."
                            f"{best_groups * (count // groups)} (topk_group={best_groups} groups of "
                            f"{count // groups} experts)")


def renumber_dense_prefix(config: PretrainedConfig, kept: Sequence[int], dense: Sequence[int]) -> None:
    """The kept dense layers stay the first ones: `first_k_dense_replace` becomes their count."""
    config.first_k_dense_replace = len(dense)


def check(cfg: ModelConfig) -> None:
    """A ModelConfig the grouped families build: at least one shared expert of the routed width, experts in equal
    groups of two or more, top-k within `topk_group` groups, dense layers a strict prefix."""
    require(cfg, "shared_expert_intermediate_size",
            lambda size: size > 0 and size % cfg.moe_intermediate_size == 0,
            f"a positive multiple of model.moe_intermediate_size={cfg.moe_intermediate_size} "
            f"({cfg.family}'s shared experts are routed-width MLPs)")
    require(cfg, "first_k_dense_replace", lambda k: k < cfg.num_hidden_layers,
            f"0..{cfg.num_hidden_layers - 1} (at least one MoE layer)")
    per_group = cfg.num_experts // cfg.n_group
    require(cfg, "num_experts", lambda count: count % cfg.n_group == 0 and per_group >= 2,
            f"a multiple of model.n_group={cfg.n_group} with at least 2 per group")
    require(cfg, "num_experts_per_tok", lambda k: k <= cfg.topk_group * per_group,
            f"1..{cfg.topk_group * per_group} (model.topk_group groups of {per_group})")


def hf_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The routing keys of a grouped family's transformers config; a dense first layer is as wide as the experts a
    token uses (top-k routed plus the shared ones)."""
    shared = cfg.shared_expert_intermediate_size // cfg.moe_intermediate_size
    return {"n_routed_experts": cfg.num_experts, "n_shared_experts": shared, "n_group": cfg.n_group,
            "topk_group": cfg.topk_group, "routed_scaling_factor": cfg.routed_scaling_factor,
            "first_k_dense_replace": cfg.first_k_dense_replace, "moe_intermediate_size": cfg.moe_intermediate_size,
            "intermediate_size": cfg.moe_intermediate_size * (cfg.num_experts_per_tok + shared)}


def grouped_family(doc: str, hf_config: Callable[[ModelConfig], PretrainedConfig],
                   check_config: Callable[[ModelConfig], None], hidden_dims: Mapping[str, int],
                   moe_type: type[nn.Module], norm_types: tuple[type[nn.Module], ...]) -> ModelFamily:
    """The ModelFamily of a grouped-routing architecture whose MoE blocks (`moe_type`: `gate`, `experts`,
    `shared_experts`) follow dense layers in the plain attention decoder."""

    def layer_view(index: int, layer: nn.Module) -> LayerView:
        mlp = layer.mlp
        moe = moe_view(mlp, mlp.shared_experts, routing=own_router) if isinstance(mlp, moe_type) else None
        return attention_layer_view(index, layer, moe, norm_types)

    return ModelFamily(doc, hf_config, functools.partial(decoder_view, layer_view=layer_view), check_config,
                       hidden_dims, check_experts=check_groups, renumber_layers=renumber_dense_prefix,
                       softmax_router=False)
