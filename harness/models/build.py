"""Build a transformers MoE causal LM from a `ModelConfig`, validating every field before any work."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from slim.harness.config.schema import ModelConfig
from slim.harness.models.families import is_positive_int, model_families, prepare_decoding, require
from slim.harness.models.linear_attention_path import install_device_dispatch

POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_experts",
    "moe_intermediate_size",
    "max_position_embeddings",
)


def _rotary_dim(cfg: ModelConfig) -> int:
    return int(cfg.head_dim * cfg.partial_rotary_factor)


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise a one-line UserError naming `model.<field>` and its allowed values; generic checks, then the family's."""
    family = model_families.get(cfg.family, "model.family")
    for field in POSITIVE_INT_FIELDS:
        require(cfg, field, is_positive_int, "a positive integer")
    require(
        cfg,
        "num_experts_per_tok",
        lambda k: is_positive_int(k) and k <= cfg.num_experts,
        f"1..{cfg.num_experts} (model.num_experts)",
    )
    require(
        cfg,
        "num_key_value_heads",
        lambda heads: cfg.num_attention_heads % heads == 0,
        f"a divisor of model.num_attention_heads={cfg.num_attention_heads}",
    )
    require(cfg, "partial_rotary_factor", lambda f: 0 < f <= 1, "a fraction in (0, 1]")
    require(
        cfg,
        "head_dim",
        lambda _: _rotary_dim(cfg) > 0 and _rotary_dim(cfg) % 2 == 0,
        f"a size whose rotary part head_dim * {cfg.partial_rotary_factor} (model.partial_rotary_factor) is even",
    )
    require(cfg, "shared_expert_intermediate_size", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    require(cfg, "mtp_num_layers", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    for field in ("rope_theta", "rms_norm_eps", "initializer_range"):
        require(cfg, field, lambda v: v > 0, "a positive number")
    require(cfg, "router_aux_loss_coef", lambda v: v >= 0, "a number >= 0")
    family.check(cfg)


def build_hf_config(cfg: ModelConfig) -> PretrainedConfig:
    """The transformers config of `cfg.family`, with `cfg.mtp_num_layers` stored as the extra attribute
    `mtp_num_hidden_layers` (the released Qwen3-Next key) so it round-trips through config.json."""
    validate_model_config(cfg)
    return model_families.get(cfg.family).hf_config(cfg)


def build_model(
    cfg: ModelConfig, device: str = "cpu", seed: int = 0, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A freshly initialized model built directly on `device` ("meta" allocates nothing) that decodes with a
    cache (`prepare_decoding`); seeds the global torch RNG with `seed` so the same config and seed give the same
    weights."""
    hf_config = build_hf_config(cfg)
    install_device_dispatch()
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    prepare_decoding(model)
    return model
