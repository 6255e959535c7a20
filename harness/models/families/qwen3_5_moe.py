"""Qwen3.5-MoE (text): Qwen3-Next's successor, the same hybrid of Gated DeltaNet and gated attention with routed experts
plus a gated shared expert; its Gated DeltaNet takes q/k/v, z, b and a from four projections instead of two.

The harness computes on the text causal LM (`Qwen3_5MoeForCausalLM`, model type `qwen3_5_moe_text`); the
released checkpoints nest it in a multimodal config with a vision tower, which transformers' own key mapping
reads (`model.language_model.*` -> `model.*`, the tower left aside). The layer view, decoding and checks are
Qwen3-Next's (qwen3_next.py), shared, not copied.
"""

from __future__ import annotations

import functools

from transformers import PreTrainedModel, Qwen3_5MoeTextConfig
from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import ModelFamily, model_families, require
from slim.harness.models.families import qwen3_next as hybrid
from slim.harness.models.view import ModelView, decoder_view

NORM_TYPES = (modeling.Qwen3_5MoeRMSNorm, modeling.Qwen3_5MoeRMSNormGated)
HIDDEN_DIMS = {
    **{name: dim for name, dim in hybrid.HIDDEN_DIMS.items() if ".linear_attn." not in name},
    **{f"model.layers.*.linear_attn.in_proj_{part}.weight": 1 for part in ("qkv", "z", "b", "a")},
    "model.layers.*.linear_attn.out_proj.weight": 0,
}


def check(cfg: ModelConfig) -> None:
    hybrid.check(cfg)
    require(cfg, "norm_topk_prob", lambda value: value is True,
            "true (qwen3_5_moe always renormalizes the top-k weights)")


def view(model: PreTrainedModel) -> ModelView:
    return decoder_view(model, functools.partial(hybrid.hybrid_layer_view, moe_type=modeling.Qwen3_5MoeSparseMoeBlock,
                                                 norm_types=NORM_TYPES))


model_families.register("qwen3_5_moe_text")(ModelFamily(
    __doc__, functools.partial(hybrid.hf_config, config_class=Qwen3_5MoeTextConfig), view, check, HIDDEN_DIMS,
    hybrid.prepare_decoding))
