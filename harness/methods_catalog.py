"""Every pluggable method family in one place, so `slim methods` and recipe validation see them all."""

from __future__ import annotations

import importlib

from harness.registry import Registry

# family package -> attribute holding its Registry
METHOD_PACKAGES: dict[str, str] = {
    "methods.criteria": "criteria",
    "methods.similarity": "similarities",
    "methods.reducers": "reducers",
    "methods.depth": "depth_selectors",
    "methods.width": "width_selectors",
    "methods.plans": "plans",
    "methods.losses": "loss_mixes",
    "methods.schedules": "weight_schedules",
    "methods.adaptations": "adaptations",
    "methods.variants": "model_variants",
    "kernels.kd_loss": "kd_implementations",
    "kernels.kd_loss.cached_reference": "cached_kd_implementations",
    "kernels.kd_loss.fused_head": "head_implementations",
    "kernels.grouped_experts": "expert_output_implementations",
    "harness.models.families": "model_families",
    "harness.data.sources": "sources",
}


def method_registries() -> list[Registry]:
    """The registries of every method family, entries loaded."""
    return [getattr(importlib.import_module(package), attr) for package, attr in METHOD_PACKAGES.items()]


def format_catalog() -> str:
    """Plain-text listing: family header, then `name  first docstring line` per entry."""
    lines = []
    for registry in method_registries():
        lines.append(f"{registry.family}:")
        rows = registry.describe()
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name:<{width}}  {doc}" for name, doc in rows]
    return "\n".join(lines)
