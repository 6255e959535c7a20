"""Shared guard for methods that read calibration statistics, and the hook through which a selector shows its scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from slim.harness.errors import UserError

S = TypeVar("S")
F = TypeVar("F", bound=Callable)

SCORES_HOOK = "scores"  # attribute of a selector: (stats, size) -> the scores it ranks by, one per layer or dim


def require_stats(stats: S | None, method: str, field: str) -> S:
    """Return `stats`, or fail with one line naming `field` when a statistics-based method got none."""
    if stats is None:
        raise UserError(f"{field}: {method!r} reads calibration statistics, but none were given "
                        "(run `slim calibrate` first)")
    return stats


def scored_by(scores: Callable) -> Callable[[F], F]:
    """Decorator: attach `scores(stats, size) -> tensor [size]`, the numbers the selector ranks by, so a compression
    report records (and plots) them; the selector itself should call it, so the plotted numbers are the ones used."""

    def attach(selector: F) -> F:
        setattr(selector, SCORES_HOOK, scores)
        return selector

    return attach
