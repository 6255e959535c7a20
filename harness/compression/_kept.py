"""Validation of kept-index lists (decoder layers, hidden dims) before any surgery starts."""

from __future__ import annotations

from collections.abc import Sequence

from slim.harness.errors import UserError


def check_kept(ids: Sequence[int], size: int, field: str, ordered: bool) -> list[int]:
    """`ids` as a list when they are non-empty, distinct, in 0..size-1 and (if `ordered`) increasing;
    else a one-line UserError naming `field`."""
    ids = [int(i) for i in ids]
    out_of_range = [i for i in ids if not 0 <= i < size]
    if not ids:
        problem = "none kept"
    elif out_of_range:
        problem = f"out of range: {out_of_range[:5]}"
    elif len(set(ids)) < len(ids):
        problem = "duplicated"
    elif ordered and ids != sorted(ids):
        problem = "unsorted"
    else:
        return ids
    allowed = (f"a non-empty, strictly increasing subset of 0..{size - 1}" if ordered
               else f"non-empty, distinct ids from 0..{size - 1} (their order is the new order)")
    raise UserError(f"{field}: kept ids {problem}; allowed: {allowed}")
