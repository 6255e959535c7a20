"""Mixtral: full attention without q/k norms, routed experts with renormalized top-k weights, no shared expert."""

from __future__ import annotations

from torch import nn
from transformers import MixtralConfig, PreTrainedModel
from transformers.models.mixtral import modeling_mixtral as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import (
    BACKBONE_HIDDEN_DIMS,
    ModelFamily,
    common_hf_kwargs,
    model_families,
    require,
    require_plain_moe,
)
from slim.harness.models.view import LayerView, ModelView, attention_layer_view, decoder_view, moe_view


def check(cfg: ModelConfig) -> None:
    require_plain_moe(cfg)
    require(cfg, "norm_topk_prob", lambda value: value is True, "true (mixtral always renormalizes the top-k weights)")


def hf_config(cfg: ModelConfig) -> MixtralConfig:
    # Mixtral names the expert count `num_local_experts` and the routed-expert width `intermediate_size`; its router
    # has no norm_topk_prob switch.
    kwargs = common_hf_kwargs(cfg)
    del kwargs["norm_topk_prob"]
    return MixtralConfig(**kwargs, intermediate_size=cfg.moe_intermediate_size)


def _layer_view(index: int, layer: nn.Module) -> LayerView:
    return attention_layer_view(index, layer, moe_view(layer.mlp), (modeling.MixtralRMSNorm,))


def view(model: PreTrainedModel) -> ModelView:
    return decoder_view(model, _layer_view)


model_families.register("mixtral")(ModelFamily(__doc__, hf_config, view, check, BACKBONE_HIDDEN_DIMS))
