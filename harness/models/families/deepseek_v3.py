"""DeepSeek-V3 (and Kimi K2 / Moonlight, which use it): multi-head latent attention, group-limited sigmoid routing with
a selection-only correction bias (grouped_routing.py), shared experts, dense first layers.

Width cuts slice the hidden dim of every projection that reads or writes it, the latent ranks and heads stay.
"""

from __future__ import annotations

from transformers import DeepseekV3Config
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import BACKBONE_HIDDEN_DIMS, common_hf_kwargs, model_families, require
from slim.harness.models.families import grouped_routing as grouped

NORM_TYPES = (modeling.DeepseekV3RMSNorm,)
# The backbone's hidden dims (MLA has q_proj only without a query latent, and no k/v projections), plus the latent
# down-projections and the shared experts (the latent norms and up-projections are rank-sized).
HIDDEN_DIMS = {
    **BACKBONE_HIDDEN_DIMS,
    "model.layers.*.self_attn.q_a_proj.weight": 1,
    "model.layers.*.self_attn.kv_a_proj_with_mqa.weight": 1,
    "model.layers.*.mlp.shared_experts.gate_proj.weight": 1,
    "model.layers.*.mlp.shared_experts.up_proj.weight": 1,
    "model.layers.*.mlp.shared_experts.down_proj.weight": 0,
}


def check(cfg: ModelConfig) -> None:
    grouped.check(cfg)
    require(cfg, "partial_rotary_factor", lambda factor: factor == 1.0,
            "1.0 (deepseek_v3 sizes its rotated part by model.qk_rope_head_dim)")
    require(cfg, "num_key_value_heads", lambda heads: heads == cfg.num_attention_heads,
            f"{cfg.num_attention_heads} (model.num_attention_heads: latent attention expands keys and values per head)")


def hf_config(cfg: ModelConfig) -> DeepseekV3Config:
    kwargs = common_hf_kwargs(cfg)
    for key in ("num_experts", "head_dim"):
        del kwargs[key]
    return DeepseekV3Config(**kwargs, **grouped.hf_kwargs(cfg), kv_lora_rank=cfg.kv_lora_rank,
                            q_lora_rank=cfg.q_lora_rank or None, qk_rope_head_dim=cfg.qk_rope_head_dim,
                            qk_nope_head_dim=cfg.head_dim - cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim)


model_families.register("deepseek_v3")(
    grouped.grouped_family(__doc__, hf_config, check, HIDDEN_DIMS, modeling.DeepseekV3MoE, NORM_TYPES))
