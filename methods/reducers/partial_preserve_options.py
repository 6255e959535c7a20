"""partial_preserve's recipe keys (compress.experts.base_choice and intact_ratio) in a module of their own, light on
purpose: a config loads and is checked before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass

from slim.harness.config.sections import config_options
from slim.harness.errors import UserError

BASE_CHOICES = ("next_important", "most_similar_to_rest")  # how merge bases are chosen (partial_preserve.BASES)


def check_options(base_choice: str, intact_ratio: float) -> None:
    if base_choice not in BASE_CHOICES:
        raise UserError(f"compress.experts.base_choice: unknown {base_choice!r}; valid: {', '.join(BASE_CHOICES)}")
    if not 0 <= intact_ratio < 1:
        raise UserError(f"compress.experts.intact_ratio: must be in [0, 1) (at least one merge base), "
                        f"got {intact_ratio}")


@config_options("compress.experts")
@dataclass
class PartialPreserveOptions:
    """partial_preserve's recipe keys, checked when a config loads."""

    base_choice: str = "next_important"  # how merge bases are chosen: next_important, most_similar_to_rest
    intact_ratio: float = 0.5  # share of the kept experts left intact, in [0, 1) (paper: half)

    def validate(self) -> None:
        check_options(self.base_choice, self.intact_ratio)
