"""OLMoE: full attention with q/k RMSNorm over the whole projection width, routed experts, no shared expert."""

from __future__ import annotations

from torch import nn
from transformers import OlmoeConfig, PreTrainedModel
from transformers.models.olmoe import modeling_olmoe as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import ModelFamily, common_hf_kwargs, model_families, require, require_plain_moe
from slim.harness.models.view import LayerView, ModelView, attention_layer_view, decoder_view, moe_view


def check(cfg: ModelConfig) -> None:
    require_plain_moe(cfg)
    # OlmoeAttention sizes k_norm as (hidden_size // num_attention_heads) * num_key_value_heads.
    require(
        cfg,
        "head_dim",
        lambda dim: dim * cfg.num_attention_heads == cfg.hidden_size,
        f"model.hidden_size / model.num_attention_heads = {cfg.hidden_size / cfg.num_attention_heads:g}",
    )


def hf_config(cfg: ModelConfig) -> OlmoeConfig:
    # OLMoE names the routed-expert width `intermediate_size`.
    return OlmoeConfig(**common_hf_kwargs(cfg), intermediate_size=cfg.moe_intermediate_size)


def _layer_view(index: int, layer: nn.Module) -> LayerView:
    return attention_layer_view(index, layer, moe_view(layer.mlp), (modeling.OlmoeRMSNorm,))


def view(model: PreTrainedModel) -> ModelView:
    return decoder_view(model, _layer_view)


model_families.register("olmoe")(ModelFamily(__doc__, hf_config, view, check))
