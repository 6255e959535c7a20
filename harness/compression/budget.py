"""How many experts each MoE layer keeps: the same number everywhere, or one global budget.

The global budget ranks experts of all layers on one scale: each layer's importance is divided by its
mean, so criteria whose magnitude drifts with depth (REAP, EAN grow with the residual norm) still
compare. Every non-exempt layer keeps at least `min_per_layer` (set it >= the student's top-k).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from slim.harness.compression.ranking import ranked
from slim.harness.errors import UserError

EPS = 1e-12


def _check_exempt(exempt: Collection[int], layers: Collection[int]) -> None:
    unknown = sorted(set(exempt) - set(layers))
    if unknown:
        raise UserError(f"compress.experts.exempt_first/exempt_last: {unknown} are not MoE layers; "
                        f"MoE layers: {sorted(layers)}")


def uniform_budget(num_experts_per_layer: Mapping[int, int], keep: int,
                   exempt: Collection[int] = ()) -> dict[int, int]:
    """layer -> experts kept: `keep` in every layer, all of them in `exempt` layers."""
    _check_exempt(exempt, num_experts_per_layer)
    counts = {}
    for layer, num_experts in sorted(num_experts_per_layer.items()):
        if layer in exempt:
            counts[layer] = num_experts
        elif 1 <= keep <= num_experts:
            counts[layer] = keep
        else:
            raise UserError(f"compress.experts.num_experts: must keep between 1 and {num_experts} experts "
                            f"in layer {layer}, got {keep}")
    return counts


def scale_free(importance: torch.Tensor) -> torch.Tensor:
    """importance [E] / its mean, float64: 1 means 'as important as the layer's average expert'."""
    importance = importance.double()
    return importance / importance.mean().clamp_min(EPS)


def allocate_experts(importance: Mapping[int, torch.Tensor], total_keep: int, min_per_layer: int,
                     exempt: Collection[int] = ()) -> dict[int, int]:
    """layer -> experts kept, summing to exactly `total_keep`: exempt layers keep all, the others at least
    `min_per_layer`, and the rest of the budget goes to the globally highest scale-free importances."""
    sizes = {layer: scores.numel() for layer, scores in sorted(importance.items())}
    _check_exempt(exempt, sizes)
    free = [layer for layer in sizes if layer not in exempt]
    if free and not 1 <= min_per_layer <= min(sizes[layer] for layer in free):
        raise UserError(f"compress.experts.min_per_layer: must be in [1, {min(sizes[layer] for layer in free)}], "
                        f"got {min_per_layer}")
    counts = {layer: sizes[layer] if layer in exempt else min_per_layer for layer in sizes}
    lowest, highest = sum(counts.values()), sum(sizes.values())
    if not lowest <= total_keep <= highest:
        raise UserError(f"compress.experts.num_experts: a global budget of {total_keep} experts is infeasible; with "
                        f"{min_per_layer} per layer and exempt layers {sorted(exempt)} it must be in "
                        f"[{lowest}, {highest}]")
    candidates = []  # (-scale-free score, layer, expert) for every expert above its layer's floor
    for layer in free:
        scores = scale_free(importance[layer])
        candidates += [(-float(scores[expert]), layer, expert) for expert in ranked(scores)[min_per_layer:]]
    for _, layer, _ in sorted(candidates)[: total_keep - lowest]:
        counts[layer] += 1
    return counts
