"""Cosine-similarity matrices from a Gram matrix or from row vectors, safe for zero vectors."""

from __future__ import annotations

import torch

EPS = 1e-12


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """gram [E, E] of vectors v_i -> cos(v_i, v_j) [E, E] in float64; zero vectors give 0 off the diagonal.

    The diagonal is 1 by definition (also for zero vectors), and rounding is clipped to [-1, 1].
    """
    gram = gram.double()
    norms = gram.diagonal().clamp_min(0.0).sqrt().clamp_min(EPS)  # [E]
    cosine = (gram / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)
    return cosine.fill_diagonal_(1.0)


def cosine_of_rows(rows: torch.Tensor) -> torch.Tensor:
    """rows [E, n] -> pairwise cosine similarity of the rows [E, E] in float64."""
    rows = rows.detach().double()
    return cosine_from_gram(rows @ rows.T)
