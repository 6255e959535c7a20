"""DeepSeek-V3's multi-head latent attention (MLA) sizes, in a light module (checked before torch is imported). They
join the `model` node; other families leave them 0. The query/key head is `head_dim` = nope part + rope part."""

from __future__ import annotations

from dataclasses import dataclass

from slim.harness.config.sections import config_options
from slim.harness.errors import UserError

FAMILY = "deepseek_v3"
MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim")


@config_options("model")
@dataclass
class LatentAttentionOptions:
    """MLA: keys and values come from one `kv_lora_rank` latent, queries from a `q_lora_rank` one (0: a full
    projection); `qk_rope_head_dim` of the head's `head_dim` is rotated, values are `v_head_dim` wide."""

    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    def validate(self) -> None:
        family = getattr(self, "family", None)
        for key in MLA_KEYS:
            value = getattr(self, key)
            if family != FAMILY and value != 0:
                raise UserError(f"model.{key}: {value!r} is not allowed; allowed: 0 ({family} has no latent "
                                f"attention; {FAMILY} has)")
            optional = key == "q_lora_rank"
            if family == FAMILY and (not isinstance(value, int) or value < (0 if optional else 1)):
                allowed = "an integer >= 0 (0: no query latent)" if optional else "a positive integer"
                raise UserError(f"model.{key}: {value!r} is not allowed; allowed: {allowed}")
        head_dim = getattr(self, "head_dim", 0)
        if family == FAMILY and not 0 < self.qk_rope_head_dim < head_dim:
            raise UserError(f"model.qk_rope_head_dim: {self.qk_rope_head_dim} is not allowed; allowed: 1.."
                            f"{head_dim - 1} (the rotated part of model.head_dim={head_dim})")
