"""What to cut, decided on the teacher's calibration statistics before any surgery: the expert plan of every kept
MoE layer (criterion -> budget -> similarity -> reducer) and the scores every depth / width selector ranks by."""

from __future__ import annotations

import torch

from slim.harness.calibration.stats import CalibrationStats
from slim.harness.compression.budget import allocate_experts, uniform_budget
from slim.harness.compression.method_support import SCORES_HOOK
from slim.harness.compression.plan import ExpertPlan
from slim.harness.compression.recipe import configured
from slim.harness.config.schema import CompressConfig
from slim.harness.errors import UserError
from slim.harness.models.view import ModelView
from slim.harness.registry import Registry


def exempt_layers(moe_layers: list[int], recipe: CompressConfig) -> set[int]:
    """The first/last N kept MoE layers, which keep all their experts."""
    first = moe_layers[: recipe.experts.exempt_first]
    last = moe_layers[len(moe_layers) - recipe.experts.exempt_last:] if recipe.experts.exempt_last else []
    return set(first) | set(last)


def expert_counts(recipe: CompressConfig, importance: dict[int, torch.Tensor], exempt: set[int],
                  top_k: int) -> dict[int, int]:
    """Experts kept per MoE layer under the uniform or global budget."""
    sizes = {layer: scores.numel() for layer, scores in importance.items()}
    target = recipe.experts.num_experts
    if recipe.experts.budget == "uniform":
        return uniform_budget(sizes, target, exempt)
    free = [layer for layer in sizes if layer not in exempt]
    total = target * len(free) + sum(sizes[layer] for layer in exempt)
    return allocate_experts(importance, total, max(recipe.experts.min_per_layer, top_k), exempt)


def plan_experts(recipe: CompressConfig, stats: CalibrationStats, model_view: ModelView, kept_layers: list[int],
                 top_k: int) -> tuple[dict[int, ExpertPlan], dict[int, torch.Tensor]]:
    """Teacher layer index -> expert plan, and -> the criterion's scores [E] it was made from, for every kept MoE
    layer (both empty when experts are kept)."""
    if not recipe.experts.num_experts:
        return {}, {}
    moe = {layer.index: layer.moe for layer in model_view.moe_layers() if layer.index in kept_layers}
    criterion, similarity, reducer = (configured(recipe, kind) for kind in ("criterion", "similarity", "reducer"))
    importance = {index: criterion(stats.moe.get(index), block) for index, block in moe.items()}
    counts = expert_counts(recipe, importance, exempt_layers(sorted(moe), recipe), top_k)
    plans = {
        index: reducer(importance[index], similarity(stats.moe.get(index), block), counts[index])
        for index, block in moe.items()
    }
    return plans, importance


def selector_scores(registry: Registry, stats: CalibrationStats, size: int) -> dict[str, list[float]]:
    """Selector name -> the scores it ranks by ([size]: one per layer or hidden dim), for every selector of
    `registry` with a scores hook whose statistics `stats` hold, whichever one the recipe picked."""
    found = {}
    for name, selector in registry.items():
        scores = getattr(selector, SCORES_HOOK, None)
        if scores is not None:
            try:
                found[name] = scores(stats, size).tolist()
            except UserError:
                continue
    return found
