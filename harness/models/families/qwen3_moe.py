"""Qwen3-MoE: full attention with per-head q/k RMSNorm in every layer, routed experts, no shared expert."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel, Qwen3MoeConfig
from transformers.models.qwen3_moe import modeling_qwen3_moe as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import (
    BACKBONE_HIDDEN_DIMS,
    ModelFamily,
    common_hf_kwargs,
    model_families,
    require_plain_moe,
)
from slim.harness.models.view import LayerView, ModelView, attention_layer_view, decoder_view, moe_view


def hf_config(cfg: ModelConfig) -> Qwen3MoeConfig:
    return Qwen3MoeConfig(**common_hf_kwargs(cfg), moe_intermediate_size=cfg.moe_intermediate_size)


def _layer_view(index: int, layer: nn.Module) -> LayerView:
    is_moe = isinstance(layer.mlp, modeling.Qwen3MoeSparseMoeBlock)
    return attention_layer_view(index, layer, moe_view(layer.mlp) if is_moe else None, (modeling.Qwen3MoeRMSNorm,))


def view(model: PreTrainedModel) -> ModelView:
    return decoder_view(model, _layer_view)


model_families.register("qwen3_moe")(ModelFamily(__doc__, hf_config, view, require_plain_moe, BACKBONE_HIDDEN_DIMS))
