"""Recipe keys of group-limited sigmoid routing (DeepSeek-V3, GLM-4.5), in a light module: a config loads and is
checked before torch is imported. They join the `model` node; every other family must leave them neutral."""

from __future__ import annotations

from dataclasses import dataclass

from slim.harness.config.sections import config_options
from slim.harness.errors import UserError

GROUPED_FAMILIES = ("deepseek_v3", "glm4_moe")
NEUTRAL = {"n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "first_k_dense_replace": 0}


@config_options("model")
@dataclass
class GroupedRoutingOptions:
    """Group-limited routing: experts form `n_group` equal groups, a token picks among the `topk_group` best groups
    only (each scored by its two best experts), its top-k weights are scaled by `routed_scaling_factor`; the first
    `first_k_dense_replace` layers are dense MLPs."""

    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 0

    def validate(self) -> None:
        family = getattr(self, "family", None)
        if family not in GROUPED_FAMILIES:
            for key, neutral in NEUTRAL.items():
                if getattr(self, key) != neutral:
                    raise UserError(f"model.{key}: {getattr(self, key)!r} is not allowed; allowed: {neutral!r} "
                                    f"({family} does not route by groups; {', '.join(GROUPED_FAMILIES)} do)")
            return
        for key in ("n_group", "topk_group"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise UserError(f"model.{key}: {getattr(self, key)!r} is not allowed; allowed: a positive integer")
        if self.topk_group > self.n_group:
            raise UserError(f"model.topk_group: {self.topk_group} is not allowed; allowed: 1..{self.n_group} "
                            "(model.n_group)")
        if not self.routed_scaling_factor > 0:
            raise UserError(f"model.routed_scaling_factor: {self.routed_scaling_factor!r} is not allowed; "
                            "allowed: a positive number")
        if not isinstance(self.first_k_dense_replace, int) or self.first_k_dense_replace < 0:
            raise UserError(f"model.first_k_dense_replace: {self.first_k_dense_replace!r} is not allowed; "
                            "allowed: an integer >= 0")
