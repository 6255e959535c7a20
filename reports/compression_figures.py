"""The compression figures papers show, as PNG + PDF beside `compression_report.json`: expert scores with what was
kept / merged / dropped, the merge map, the depth score curves with the dropped layers, the hidden-dim importance."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from slim.reports.compression import (
    DROPPED,
    MERGED,
    DepthCurves,
    ExpertMatrix,
    WidthImportance,
    depth_curves,
    expert_matrix,
    width_importance,
)
from slim.reports.render import atomic_write

ANNOTATE_MAX_EXPERTS = 32  # write the student expert id in each merge-map cell up to this many teacher experts


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _grid_size(matrix: ExpertMatrix) -> tuple[float, float]:
    """Inches for a layers x experts grid: cells about 0.28 in, within 5-14 in wide and 2.5-10 in high."""
    return (min(max(2.5 + 0.28 * matrix.num_experts, 5.0), 14.0),
            min(max(1.2 + 0.28 * len(matrix.layers), 2.5), 10.0))


def _layer_axis(axes, matrix: ExpertMatrix) -> None:
    axes.set_yticks(range(len(matrix.layers)), [str(layer) for layer in matrix.layers])
    axes.set_ylabel("teacher layer")
    axes.set_xlabel("teacher expert")


def row_normalized(scores: list[list[float | None]]) -> list[list[float]]:
    """Each layer's scores over its largest (criteria scale differently per layer); NaN where there is none."""
    rows = []
    for row in scores:
        present = [value for value in row if value is not None]
        peak = max(present, default=0.0)
        rows.append([math.nan if value is None else value / peak if peak > 0 else value for value in row])
    return rows


def plot_expert_scores(matrix: ExpertMatrix) -> Figure:
    """Heatmap of the criterion's scores per layer, merged experts circled and dropped ones crossed."""
    figure = _figure(*_grid_size(matrix))
    axes = figure.add_subplot()
    image = axes.imshow(row_normalized(matrix.scores), aspect="auto", cmap="viridis", vmin=0.0, interpolation="none")
    figure.colorbar(image, ax=axes, label=f"{matrix.criterion} score / layer max")
    size = max(4.0, min(40.0, 2000.0 / max(matrix.num_experts, len(matrix.layers))))
    for status, style in ((MERGED, dict(marker="o", facecolors="none", edgecolors="white")),
                          (DROPPED, dict(marker="x", color="red"))):
        cells = [(expert, row) for row, statuses in enumerate(matrix.status)
                 for expert, value in enumerate(statuses) if value == status]
        if cells:
            axes.scatter(*zip(*cells), s=size, linewidths=1.0, **style)
    _layer_axis(axes, matrix)
    axes.set_title(f"expert {matrix.criterion} scores: kept (plain), merged (o), dropped (x)", fontsize="medium")
    return figure


GROUP_COLORS = [color for index, color in enumerate(colormaps["tab10"].colors) if index != 7]  # tab10 less its grey


def merge_colors(matrix: ExpertMatrix) -> list[list[int]]:
    """Colour index per cell: 0 dropped, 1 kept alone, 2 + (student expert mod 9) for a member of a merge."""
    return [[0 if status == DROPPED else 2 + target % len(GROUP_COLORS) if status == MERGED else 1
             for status, target in zip(statuses, targets)]
            for statuses, targets in zip(matrix.status, matrix.target)]


def plot_merge_map(matrix: ExpertMatrix) -> Figure:
    """Which teacher experts went into which student expert: one colour per merged group, grey kept, white dropped;
    the student expert id is written in each cell (bold: the member whose router row it inherits)."""
    figure = _figure(*_grid_size(matrix))
    axes = figure.add_subplot()
    colors = [(1.0, 1.0, 1.0), (0.82, 0.82, 0.82), *GROUP_COLORS]
    axes.imshow(merge_colors(matrix), aspect="auto", cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1,
                interpolation="none")
    if matrix.num_experts <= ANNOTATE_MAX_EXPERTS:
        for row, targets in enumerate(matrix.target):
            for expert, target in enumerate(targets):
                if target is not None:
                    bold = matrix.bases[row][target] == expert
                    axes.text(expert, row, str(target), ha="center", va="center", fontsize="x-small",
                              fontweight="bold" if bold else "normal")
    _layer_axis(axes, matrix)
    axes.set_title("merge map: student expert of each teacher expert\n"
                   "colour: merged group, grey: kept alone, white: dropped", fontsize="small")
    return figure



def plot_depth_curves(depth: DepthCurves) -> Figure:
    """One panel per depth selector's per-layer score, the layers the recipe dropped shaded."""
    figure = _figure(5.5, 1.2 + 1.9 * len(depth.curves))
    panels = figure.subplots(len(depth.curves), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (name, scores) in zip(panels, depth.curves.items()):
        axes.plot(range(len(scores)), scores, marker="o", markersize=3, linewidth=1.5)
        for layer in depth.dropped:
            axes.axvspan(layer - 0.5, layer + 0.5, color="grey", alpha=0.3, linewidth=0)
        axes.set_ylabel(f"{name} score")
        axes.grid(alpha=0.3)
    panels[-1].set_xlabel("teacher layer")
    panels[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"depth scores per layer; shaded: the {len(depth.dropped)} layers {depth.selector} dropped",
                    fontsize="medium")
    return figure


def plot_width_importance(width: WidthImportance) -> Figure:
    """The importance distribution (kept and cut dims stacked) and the sorted importance, each with the cut line."""
    figure = _figure(9.0, 3.4)
    histogram, ranked = figure.subplots(1, 2)
    kept = [score for score, keep in zip(width.scores, width.kept) if keep]
    cut = [score for score, keep in zip(width.scores, width.kept) if not keep]
    histogram.hist([kept, cut], bins=min(60, max(10, len(width.scores) // 8)), stacked=True,
                   color=["tab:blue", "tab:grey"], label=[f"kept ({len(kept)})", f"dropped ({len(cut)})"])
    histogram.set_xlabel(f"{width.selector} importance")
    histogram.set_ylabel("hidden dims")
    ranked.plot(range(1, len(width.scores) + 1), sorted(width.scores, reverse=True), linewidth=1.5)
    ranked.set_xlabel("rank")
    ranked.set_ylabel(f"{width.selector} importance")
    if width.cut is not None:
        histogram.axvline(width.cut, color="red", linewidth=1.0, label="cut line")
        ranked.axvline(len(kept) + 0.5, color="red", linewidth=1.0)
    histogram.legend(frameon=False, fontsize="small")
    for axes in (histogram, ranked):
        axes.grid(alpha=0.3)
    figure.suptitle(f"hidden-dim importance: {len(kept)} of {len(width.scores)} dims kept", fontsize="medium")
    return figure


PLOTS = {  # figure name -> (its data from a report, None when the report has none; the plot of that data)
    "compression_experts": (expert_matrix, plot_expert_scores),
    "compression_merge_map": (expert_matrix, plot_merge_map),
    "compression_depth": (depth_curves, plot_depth_curves),
    "compression_width": (width_importance, plot_width_importance),
}


def figure_names(report: dict) -> list[str]:
    """The figures the report holds data for."""
    return [name for name, (data, _) in PLOTS.items() if data(report) is not None]


def compression_figures(report: dict) -> dict[str, Figure]:
    """Figure name -> figure, for each figure whose data the report holds."""
    return {name: plot(data(report)) for name, (data, plot) in PLOTS.items() if data(report) is not None}


def write_compression_figures(report: dict, out_dir: str | Path) -> list[Path]:
    """Write `<name>.png` and `<name>.pdf` into `out_dir` for every figure the report has data for; the paths."""
    paths = []
    for name, figure in compression_figures(report).items():
        for suffix in ("png", "pdf"):
            path = Path(out_dir) / f"{name}.{suffix}"
            atomic_write(path, lambda stream, figure=figure, suffix=suffix: figure.savefig(stream, format=suffix,
                                                                                           dpi=200))
            paths.append(path)
    return paths
