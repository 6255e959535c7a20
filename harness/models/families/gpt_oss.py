"""gpt-oss: attention with learned sinks and alternating sliding-window / full layers; experts with biases and a
clamped SwiGLU over an interleaved gate/up projection ([E, d, 2I], gate and up in alternate columns); a router with
a bias, softmax over the top-k logits.

The view computes an expert exactly as the model does (its own gate function), so calibration statistics and
expert-output similarities are the model's. A merge averages the expert biases with the weights; every cut keeps
the router bias with the router rows it keeps. Width cuts slice the hidden dim of every tensor that has it; heads,
sinks and the window stay.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GptOssConfig, PreTrainedModel
from transformers.models.gpt_oss import modeling_gpt_oss as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import (
    BACKBONE_HIDDEN_DIMS,
    ModelFamily,
    common_hf_kwargs,
    model_families,
    require,
    require_plain_moe,
)
from slim.harness.models.view import LayerView, ModelView, MoEView, attention_layer_view, decoder_view, own_router

# The backbone's attention and norm dims; the MoE tensors have their own names and layout.
HIDDEN_DIMS = {
    **{name: dim for name, dim in BACKBONE_HIDDEN_DIMS.items() if ".mlp." not in name},
    "model.layers.*.mlp.router.weight": 1,
    "model.layers.*.mlp.experts.gate_up_proj": 1,
    "model.layers.*.mlp.experts.down_proj": 2,
    "model.layers.*.mlp.experts.down_proj_bias": 1,
}
SLIDING_WINDOW = 128  # gpt-oss's released window, for models built from a ModelConfig


def check(cfg: ModelConfig) -> None:
    require_plain_moe(cfg)
    require(cfg, "norm_topk_prob", lambda value: value is True,
            "true (gpt-oss normalizes the top-k logits with a softmax over them)")


def hf_config(cfg: ModelConfig) -> GptOssConfig:
    """Layers alternate sliding-window and full attention, as released; the expert width is `intermediate_size`."""
    kwargs = common_hf_kwargs(cfg)
    for key in ("num_experts", "norm_topk_prob"):
        del kwargs[key]
    layer_types = ["sliding_attention" if index % 2 == 0 else "full_attention"
                   for index in range(cfg.num_hidden_layers)]
    return GptOssConfig(**kwargs, num_local_experts=cfg.num_experts, intermediate_size=cfg.moe_intermediate_size,
                        layer_types=layer_types, sliding_window=SLIDING_WINDOW)


def expert_forward(moe: MoEView, expert: int, x: torch.Tensor) -> torch.Tensor:
    """Unweighted output [T, d] of expert `expert`, as GptOssExperts computes it."""
    experts = moe.module.experts
    gate_up = x @ experts.gate_up_proj[expert] + experts.gate_up_proj_bias[expert]
    return experts._apply_gate(gate_up) @ experts.down_proj[expert] + experts.down_proj_bias[expert]


def moe_view(block: nn.Module) -> MoEView:
    router, experts = block.router, block.experts
    return MoEView(module=block, router_module=router, router=router.weight, gate_up_proj=experts.gate_up_proj,
                   down_proj=experts.down_proj, act_fn=torch.sigmoid, top_k=router.top_k, norm_topk_prob=True,
                   router_bias=router.bias, expert_biases=(experts.gate_up_proj_bias, experts.down_proj_bias),
                   routing=own_router, expert_fn=expert_forward, returns_weights=True)


def _layer_view(index: int, layer: nn.Module) -> LayerView:
    return attention_layer_view(index, layer, moe_view(layer.mlp), (modeling.GptOssRMSNorm,))


def view(model: PreTrainedModel) -> ModelView:
    return decoder_view(model, _layer_view)


model_families.register("gpt_oss")(ModelFamily(__doc__, hf_config, view, check, HIDDEN_DIMS, softmax_router=False))
