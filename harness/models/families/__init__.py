"""Model families: one module per transformers architecture, registered under its `model_type`.

A family says how a `ModelConfig` becomes that architecture's transformers config, which fields it
cannot express, and how its modules map onto the uniform `ModelView`. Adding a family is one new module
here and nothing else (mixtral.py is a small example); the README table lists each family's cuts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slim.harness.config.schema import ModelConfig
from slim.harness.errors import UserError
from slim.harness.registry import Registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from slim.harness.models.view import ModelView


@dataclass(frozen=True)
class ModelFamily:
    """How one architecture is built from a ModelConfig and seen through the uniform view."""

    doc: str
    hf_config: Callable[[ModelConfig], PretrainedConfig]
    view: Callable[[PreTrainedModel], ModelView]
    # Family-specific validation; runs after the generic checks of `validate_model_config`.
    check: Callable[[ModelConfig], None]
    # Parameter name (layer index written `*`) -> the dim that is the model width; width pruning slices
    # exactly these. None: the family cannot shrink its width independently of its heads.
    hidden_dims: Mapping[str, int] | None = None
    # Makes cached decoding (`generate`, forwards with use_cache) work on a model of the family where
    # transformers' own cache cannot (idempotent) and names the cache path it takes. None: transformers'
    # cache serves every model of the family.
    prepare_decoding: Callable[[PreTrainedModel], str] | None = None
    # Refuses, in one line naming the rule, expert counts its routing cannot take: (config, experts each MoE layer
    # keeps, the student's top-k). None: any count from top-k up.
    check_experts: Callable[[PretrainedConfig, Sequence[int], int], None] | None = None
    # Updates the config fields that count layers its own way after a depth cut: (config, kept old indices, new
    # indices of the kept dense layers). None: the generic fields (layer_types, mlp_only_layers) say it all.
    renumber_layers: Callable[[PretrainedConfig, Sequence[int], Sequence[int]], None] | None = None
    # Whether its router is a softmax over all experts, then top-k (a router weight and nothing else): what
    # adaptations that extend the router (zero experts) build on.
    softmax_router: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.doc)  # what `slim methods` lists


model_families: Registry[ModelFamily] = Registry.of_group("slim.model_families")


def softmax_router_families() -> list[str]:
    """The registered families whose router is a plain softmax top-k (ModelFamily.softmax_router)."""
    return sorted(name for name, family in model_families.items() if family.softmax_router)

TRANSFORMERS_CACHE = "transformers"


def prepare_decoding(model: PreTrainedModel) -> str:
    """Make `model` decode with a cache, O(1) work per new token (build and load call it); returns which cache
    path decoding takes: TRANSFORMERS_CACHE, or the name of its family's own."""
    family = model_families.get(model.config.model_type, "model.config.model_type")
    return family.prepare_decoding(model) if family.prepare_decoding is not None else TRANSFORMERS_CACHE


def require(cfg: ModelConfig, field: str, ok: Callable[[Any], bool], allowed: str) -> None:
    """Raise a one-line UserError naming `model.<field>` and the allowed values unless `ok(value)`."""
    value = getattr(cfg, field)
    if not ok(value):
        raise UserError(f"model.{field}: {value!r} is not allowed; allowed: {allowed}")


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def require_plain_moe(cfg: ModelConfig) -> None:
    """Families without a shared expert or partial RoPE must leave those fields neutral, not ignore them."""
    require(cfg, "shared_expert_intermediate_size", lambda v: v == 0, f"0 ({cfg.family} has no shared expert)")
    require(cfg, "partial_rotary_factor", lambda v: v == 1.0, f"1.0 ({cfg.family} rotates the whole head)")


# Hidden dims of the decoder skeleton every family shares; head-sized tensors (q/k norms, biases of
# q/k/v) are absent on purpose: heads keep their size when the width shrinks.
BACKBONE_HIDDEN_DIMS: dict[str, int] = {
    "model.embed_tokens.weight": 1,
    "model.norm.weight": 0,
    "lm_head.weight": 1,
    "model.layers.*.input_layernorm.weight": 0,
    "model.layers.*.post_attention_layernorm.weight": 0,
    "model.layers.*.self_attn.q_proj.weight": 1,
    "model.layers.*.self_attn.k_proj.weight": 1,
    "model.layers.*.self_attn.v_proj.weight": 1,
    "model.layers.*.self_attn.o_proj.weight": 0,
    "model.layers.*.self_attn.o_proj.bias": 0,
    "model.layers.*.mlp.gate.weight": 1,
    "model.layers.*.mlp.experts.gate_up_proj": 2,
    "model.layers.*.mlp.experts.down_proj": 1,
    "model.layers.*.mlp.gate_proj.weight": 1,
    "model.layers.*.mlp.up_proj.weight": 1,
    "model.layers.*.mlp.down_proj.weight": 0,
}


def common_hf_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Config kwargs every supported family reads under the same name; the MTP depth rides along under the
    released Qwen3-Next key `mtp_num_hidden_layers` (transformers has no MTP module and ignores it)."""
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "norm_topk_prob": cfg.norm_topk_prob,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
        "initializer_range": cfg.initializer_range,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "mtp_num_hidden_layers": cfg.mtp_num_layers,
    }
