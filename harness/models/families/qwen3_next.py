"""Qwen3-Next: hybrid Gated DeltaNet / gated attention, routed experts plus a gated shared expert.

Every `full_attention_interval`-th layer is gated full attention (q_proj emits query and gate), the
rest Gated DeltaNet (`linear_attn`). Its RMSNorms, except the gated DeltaNet one, are zero-centred:
output = x̂ · (1 + weight). A depth-pruned student left with Gated DeltaNet layers only decodes through
`LinearStateCache`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel, Qwen3NextConfig
from transformers.models.qwen3_next import modeling_qwen3_next as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import (
    BACKBONE_HIDDEN_DIMS,
    TRANSFORMERS_CACHE,
    ModelFamily,
    common_hf_kwargs,
    is_positive_int,
    model_families,
    require,
)
from slim.harness.models.view import LayerView, ModelView, decoder_view, moe_view

NORM_TYPES = (modeling.Qwen3NextRMSNorm, modeling.Qwen3NextRMSNormGated)

# The backbone's hidden dims plus Gated DeltaNet's projections and the gated shared expert
# (the DeltaNet norm and conv1d are head-sized).
HIDDEN_DIMS = {
    **BACKBONE_HIDDEN_DIMS,
    "model.layers.*.linear_attn.in_proj_qkvz.weight": 1,
    "model.layers.*.linear_attn.in_proj_ba.weight": 1,
    "model.layers.*.linear_attn.out_proj.weight": 0,
    "model.layers.*.mlp.shared_expert.gate_proj.weight": 1,
    "model.layers.*.mlp.shared_expert.up_proj.weight": 1,
    "model.layers.*.mlp.shared_expert.down_proj.weight": 0,
    "model.layers.*.mlp.shared_expert_gate.weight": 1,
}


def layer_types(num_layers: int, full_attention_interval: int) -> list[str]:
    """Layer i is full attention iff (i + 1) % interval == 0, as in transformers' default."""
    return [
        "full_attention" if (index + 1) % full_attention_interval == 0 else "linear_attention"
        for index in range(num_layers)
    ]


def check(cfg: ModelConfig) -> None:
    for field in (
        "full_attention_interval",
        "linear_num_key_heads",
        "linear_num_value_heads",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_conv_kernel_dim",
    ):
        require(cfg, field, is_positive_int, "a positive integer")
    require(
        cfg,
        "linear_num_value_heads",
        lambda heads: heads % cfg.linear_num_key_heads == 0,
        f"a multiple of model.linear_num_key_heads={cfg.linear_num_key_heads}",
    )
    require(cfg, "shared_expert_intermediate_size", is_positive_int, "a positive integer (qwen3_next always has one)")


def hf_config(cfg: ModelConfig, config_class: type[PretrainedConfig] = Qwen3NextConfig) -> PretrainedConfig:
    """The hybrid config of `cfg` as `config_class` (Qwen3.5-MoE's text config takes the same keys)."""
    kwargs = common_hf_kwargs(cfg)
    kwargs["rope_parameters"]["partial_rotary_factor"] = cfg.partial_rotary_factor
    return config_class(
        **kwargs,
        layer_types=layer_types(cfg.num_hidden_layers, cfg.full_attention_interval),
        linear_num_key_heads=cfg.linear_num_key_heads,
        linear_num_value_heads=cfg.linear_num_value_heads,
        linear_key_head_dim=cfg.linear_key_head_dim,
        linear_value_head_dim=cfg.linear_value_head_dim,
        linear_conv_kernel_dim=cfg.linear_conv_kernel_dim,
        moe_intermediate_size=cfg.moe_intermediate_size,
        shared_expert_intermediate_size=cfg.shared_expert_intermediate_size,
    )


def hybrid_layer_view(index: int, layer: nn.Module, moe_type: type[nn.Module] = modeling.Qwen3NextSparseMoeBlock,
                      norm_types: tuple[type[nn.Module], ...] = NORM_TYPES) -> LayerView:
    """LayerView of a hybrid decoder layer (`linear_attn` or `self_attn` by `block_type`, a `moe_type` block with a
    gated shared expert), as Qwen3-Next and Qwen3.5-MoE lay it out."""
    mlp = layer.mlp
    is_moe = isinstance(mlp, moe_type)
    return LayerView(
        index=index,
        name=f"model.layers.{index}",
        kind=layer.block_type,
        module=layer,
        mixer=layer.linear_attn if layer.block_type == "linear_attention" else layer.self_attn,
        input_norm=layer.input_layernorm,
        post_attention_norm=layer.post_attention_layernorm,
        moe=moe_view(mlp, mlp.shared_expert, mlp.shared_expert_gate) if is_moe else None,
        norm_types=norm_types,
    )


def view(model: PreTrainedModel) -> ModelView:
    return decoder_view(model, hybrid_layer_view)


LINEAR_STATE_CACHE = "harness-linear-state"


class LinearStateCache(DynamicCache):
    """transformers' DynamicCache for a Qwen3-Next without full-attention layers: it holds each Gated DeltaNet
    layer's conv and recurrent state, as DynamicCache does, and also counts the tokens it has seen (the
    decoder's forward hook adds them). transformers reads the cache length (positions, mask sizes) from an
    attention layer, which this model has none of ("get_seq_length can only be called on Attention layers")."""

    seen_tokens = 0  # a class attribute: a DynamicCache re-typed in place starts from it too

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0


def _has_attention(config: Qwen3NextConfig) -> bool:
    return "full_attention" in config.layer_types


def _wants_cache(decoder: nn.Module, kwargs: dict[str, Any]) -> bool:
    """use_cache as the decoder's forward resolves it (transformers' merge_with_config_defaults)."""
    use_cache = kwargs.get("use_cache")
    if use_cache is None:
        use_cache = decoder.config.use_cache
    checkpointing = getattr(decoder, "gradient_checkpointing", False) and decoder.training and torch.is_grad_enabled()
    return bool(use_cache) and not checkpointing


def _serve_linear_state_cache(decoder: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
    """Forward pre-hook of the decoder: without a full-attention layer, its cache is a LinearStateCache. The plain
    DynamicCache that `generate` (or a caller) builds from the config is re-typed in place, so whoever holds it
    keeps the cache that is filled; it holds no state yet, since a forward through it would have failed."""
    if _has_attention(decoder.config):
        return None
    cache = kwargs.get("cache")
    if type(cache) is DynamicCache:
        cache.__class__ = LinearStateCache
    elif cache is None and _wants_cache(decoder, kwargs):
        return args, {**kwargs, "cache": LinearStateCache(config=decoder.config)}
    return None


def _count_seen_tokens(decoder: nn.Module, args: tuple, kwargs: dict[str, Any], output: object) -> None:
    """Forward hook of the decoder: a LinearStateCache has now seen this forward's tokens too."""
    cache = kwargs.get("cache")
    if isinstance(cache, LinearStateCache):
        inputs = kwargs.get("input_ids", args[0] if args else None)
        cache.seen_tokens += (inputs if inputs is not None else kwargs["inputs_embeds"]).shape[1]


def prepare_decoding(model: PreTrainedModel) -> str:
    """Hook LinearStateCache into the decoder (once; the hooks check the layer types at each call, so a model
    pruned in memory later is served too) and name the cache path the model takes now."""
    decoder = model.model
    if not getattr(decoder, "serves_linear_state_cache", False):
        decoder.register_forward_pre_hook(_serve_linear_state_cache, with_kwargs=True)
        decoder.register_forward_hook(_count_seen_tokens, with_kwargs=True)
        decoder.serves_linear_state_cache = True
    return TRANSFORMERS_CACHE if _has_attention(model.config) else LINEAR_STATE_CACHE


model_families.register("qwen3_next")(ModelFamily(__doc__, hf_config, view, check, HIDDEN_DIMS, prepare_decoding))
