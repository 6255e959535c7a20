"""Shared guard for methods that read calibration statistics."""

from __future__ import annotations

from typing import TypeVar

from harness.errors import UserError

S = TypeVar("S")


def require_stats(stats: S | None, method: str, field: str) -> S:
    """Return `stats`, or fail with one line naming `field` when a statistics-based method got none."""
    if stats is None:
        raise UserError(f"{field}: {method!r} reads calibration statistics, but none were given "
                        "(run `slim calibrate` first)")
    return stats
