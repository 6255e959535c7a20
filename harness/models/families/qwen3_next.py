"""Qwen3-Next: hybrid Gated DeltaNet / gated attention, routed experts plus a gated shared expert.

Every `full_attention_interval`-th layer is gated full attention (q_proj emits query and gate), the
rest Gated DeltaNet (`linear_attn`). Its RMSNorms, except the gated DeltaNet one, are zero-centred:
output = x̂ · (1 + weight).
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel, Qwen3NextConfig
from transformers.models.qwen3_next import modeling_qwen3_next as modeling

from harness.config.schema import ModelConfig
from harness.models.families import (
    BACKBONE_HIDDEN_DIMS,
    ModelFamily,
    common_hf_kwargs,
    is_positive_int,
    model_families,
    require,
)
from harness.models.view import LayerView, ModelView, decoder_view, moe_view

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


def hf_config(cfg: ModelConfig) -> Qwen3NextConfig:
    kwargs = common_hf_kwargs(cfg)
    kwargs["rope_parameters"]["partial_rotary_factor"] = cfg.partial_rotary_factor
    return Qwen3NextConfig(
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


def _layer_view(index: int, layer: nn.Module) -> LayerView:
    mlp = layer.mlp
    is_moe = isinstance(mlp, modeling.Qwen3NextSparseMoeBlock)
    return LayerView(
        index=index,
        name=f"model.layers.{index}",
        kind=layer.block_type,
        module=layer,
        mixer=layer.linear_attn if layer.block_type == "linear_attention" else layer.self_attn,
        input_norm=layer.input_layernorm,
        post_attention_norm=layer.post_attention_layernorm,
        moe=moe_view(mlp, mlp.shared_expert, mlp.shared_expert_gate) if is_moe else None,
        norm_types=NORM_TYPES,
    )


def view(model: PreTrainedModel) -> ModelView:
    return decoder_view(model, _layer_view)


model_families.register("qwen3_next")(ModelFamily(__doc__, hf_config, view, check, HIDDEN_DIMS))
