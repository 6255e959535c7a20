"""GLM-4.5 (and 4.6, 4.5-Air): grouped-query attention with biased q/k/v, partial RoPE and per-head q/k norms, the
group-limited sigmoid routing of DeepSeek-V3 (grouped_routing.py, shared, not copied), shared experts, dense first
layers. Released GLM-4.5 routes with one group; the groups are kept general as its transformers class is."""

from __future__ import annotations

from transformers import Glm4MoeConfig
from transformers.models.glm4_moe import modeling_glm4_moe as modeling

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import BACKBONE_HIDDEN_DIMS, common_hf_kwargs, model_families
from slim.harness.models.families import grouped_routing as grouped

NORM_TYPES = (modeling.Glm4MoeRMSNorm,)
HIDDEN_DIMS = {
    **BACKBONE_HIDDEN_DIMS,
    "model.layers.*.mlp.shared_experts.gate_proj.weight": 1,
    "model.layers.*.mlp.shared_experts.up_proj.weight": 1,
    "model.layers.*.mlp.shared_experts.down_proj.weight": 0,
}


def hf_config(cfg: ModelConfig) -> Glm4MoeConfig:
    kwargs = common_hf_kwargs(cfg)
    del kwargs["num_experts"]
    kwargs["rope_parameters"]["partial_rotary_factor"] = cfg.partial_rotary_factor
    return Glm4MoeConfig(**kwargs, **grouped.hf_kwargs(cfg), attention_bias=True, use_qk_norm=True)


model_families.register("glm4_moe")(
    grouped.grouped_family(__doc__, hf_config, grouped.check, HIDDEN_DIMS, modeling.Glm4MoeMoE, NORM_TYPES))
