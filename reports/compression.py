"""What the compression figures show, read from a `compression_report.json` dict: plain data, no plotting.

A teacher expert is KEPT when it is alone in its student expert, MERGED when it shares one with other teacher
experts (the group's base included), DROPPED when it is in none. Layer and expert ids are the teacher's.
"""

from __future__ import annotations

from dataclasses import dataclass

KEPT, MERGED, DROPPED = "kept", "merged", "dropped"


@dataclass(frozen=True)
class ExpertMatrix:
    """Kept MoE layers (rows) x teacher experts (columns); rows of fewer experts are padded with None / DROPPED."""

    criterion: str
    layers: list[int]
    num_experts: int
    scores: list[list[float | None]]  # [layer][expert] the criterion's score, None where the report has none
    status: list[list[str]]  # [layer][expert] KEPT / MERGED / DROPPED
    target: list[list[int | None]]  # [layer][expert] student expert it went into, None when dropped
    bases: list[list[int]]  # [layer][student expert] teacher expert whose router row it inherits


@dataclass(frozen=True)
class DepthCurves:
    """Per teacher layer, each depth selector's score on the calibration stats, and the layers the recipe dropped."""

    selector: str
    curves: dict[str, list[float]]
    dropped: list[int]


@dataclass(frozen=True)
class WidthImportance:
    """Per teacher hidden dim, the width selector's importance; `cut` is the lowest kept one (None: no width cut)."""

    selector: str
    scores: list[float]
    kept: list[bool]
    cut: float | None


def expert_status(merge_map: dict[int, int], num_experts: int) -> tuple[list[str], list[int | None]]:
    """(status, student expert) of each of `num_experts` teacher experts under one layer's merge map."""
    sizes: dict[int, int] = {}
    for new in merge_map.values():
        sizes[new] = sizes.get(new, 0) + 1
    target = [merge_map.get(old) for old in range(num_experts)]
    status = [DROPPED if new is None else KEPT if sizes[new] == 1 else MERGED for new in target]
    return status, target


def _layer_size(entry: dict) -> int:
    if "scores" in entry:
        return len(entry["scores"])
    return len(entry["merge_map"]) + len(entry["dropped_ids"])


def expert_matrix(report: dict) -> ExpertMatrix | None:
    """The experts of every layer the recipe reduced, or None when it kept all experts."""
    entries = {int(layer): entry for layer, entry in report.get("experts", {}).items()}
    if not entries:
        return None
    layers = sorted(entries)
    width = max(_layer_size(entries[layer]) for layer in layers)
    scores, status, target = [], [], []
    for layer in layers:
        entry = entries[layer]
        row_status, row_target = expert_status({int(old): new for old, new in entry["merge_map"].items()}, width)
        row_scores = list(entry.get("scores", []))
        scores.append(row_scores + [None] * (width - len(row_scores)))
        status.append(row_status)
        target.append(row_target)
    return ExpertMatrix(report["recipe"]["experts"]["criterion"], layers, width, scores, status, target,
                        [list(entries[layer]["kept_ids"]) for layer in layers])


def depth_curves(report: dict) -> DepthCurves | None:
    """Every recorded depth score curve with the dropped layers, or None when the stats held none."""
    curves = report.get("depth_scores") or {}
    if not curves:
        return None
    num_layers = len(next(iter(curves.values())))
    kept = set(report["kept_layers"])
    return DepthCurves(report["recipe"]["depth"]["selector"], dict(curves),
                       [layer for layer in range(num_layers) if layer not in kept])


def width_importance(report: dict) -> WidthImportance | None:
    """The recipe's width selector's importance per hidden dim, or None when the report has none for it."""
    selector = report["recipe"]["width"]["selector"]
    scores = (report.get("width_scores") or {}).get(selector)
    if scores is None:
        return None
    kept_dims = set(report["kept_dims"])
    kept = [dim in kept_dims for dim in range(len(scores))]
    cut = min(score for score, keep in zip(scores, kept) if keep) if len(kept_dims) < len(scores) else None
    return WidthImportance(selector, list(scores), kept, cut)
