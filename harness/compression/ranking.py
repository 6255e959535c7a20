"""Deterministic ranking shared by every selector: highest score first, ties to the lower id."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def ranked(scores: torch.Tensor | Sequence[float], ids: Iterable[int] | None = None) -> list[int]:
    """`ids` (default: every index of `scores`) ordered by descending `scores[id]`, ties by ascending id."""
    values = scores.tolist() if isinstance(scores, torch.Tensor) else list(scores)
    pool = range(len(values)) if ids is None else ids
    return sorted(pool, key=lambda i: (-values[i], i))


def top(scores: torch.Tensor | Sequence[float], n: int) -> list[int]:
    """The n highest-scoring indices, ascending (ties by ascending id)."""
    return sorted(ranked(scores)[:n])
