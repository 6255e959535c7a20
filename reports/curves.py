"""Figure 2-style loss curves: one line per table row (mean over seeds) with a band over the seeds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FormatStrFormatter

from slim.reports.aggregate import group_results
from slim.reports.results import CellResult, load_run_metrics, metric_series
from slim.reports.spec import TableSpec


@dataclass(frozen=True)
class CurveSpec:
    """Which curve to plot and how: x in steps, or in tokens when `tokens_per_step` is given."""

    metric: str = "train/loss"
    tokens_per_step: int | None = None
    band: Literal["minmax", "std"] = "minmax"
    log_x: bool = False
    log_y: bool = False

    def __post_init__(self) -> None:
        if self.band not in ("minmax", "std"):
            raise ValueError(f"band: unknown {self.band!r}; valid: minmax, std")


@dataclass(frozen=True)
class Line:
    """One row's curve over the steps every seed logged: mean, and the band's lower and upper edge."""

    label: str
    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]


def seed_line(label: str, seeds: list[tuple[list[int], list[float]]], band: str) -> Line:
    """Pool seed curves on their common steps (a seed that stopped early shortens the line)."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in seeds)))
    by_step = [dict(zip(steps, values)) for steps, values in seeds]
    columns = [[values[step] for values in by_step] for step in common]
    mean = [statistics.fmean(column) for column in columns]
    if band == "std" and len(seeds) > 1:
        spread = [statistics.stdev(column) for column in columns]
        return Line(label, common, mean, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)])
    return Line(label, common, mean, [min(column) for column in columns], [max(column) for column in columns])


def build_lines(results: list[CellResult], spec: TableSpec, curve: CurveSpec) -> list[Line]:
    """One Line per row whose results carry `curve.metric`, in the table's row order."""
    lines = []
    for key, members in group_results(results, spec).items():
        seeds = [metric_series(load_run_metrics(member.curves[curve.metric]), curve.metric)
                 for member in members if curve.metric in member.curves]
        seeds = [seed for seed in seeds if seed[0]]
        if seeds:
            lines.append(seed_line(" / ".join(spec.display(key)), seeds, curve.band))
    return lines


def plot_lines(lines: list[Line], curve: CurveSpec) -> Figure:
    """A single-panel figure; Agg canvas, so no display or pyplot state is involved."""
    figure = Figure(figsize=(5.5, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    scale = curve.tokens_per_step or 1
    for line in lines:
        x = [step * scale for step in line.steps]
        # a line of one point (a run too short to log more) would draw nothing: it gets a marker
        (drawn,) = axes.plot(x, line.mean, label=line.label, linewidth=1.5, marker="o" if len(x) < 2 else None)
        axes.fill_between(x, line.low, line.high, color=drawn.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("training tokens" if curve.tokens_per_step else "training steps")
    axes.set_ylabel(curve.metric)
    axes.set_xscale("log" if curve.log_x else "linear")
    axes.set_yscale("log" if curve.log_y else "linear")
    if curve.tokens_per_step:
        axes.xaxis.set_major_formatter(EngFormatter(sep=""))  # 50k, 1.2M, 400G rather than 1e9 offsets
    if curve.log_y:
        axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 2, 3, 4 rather than 2×10^0
        axes.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axes.grid(alpha=0.3)
    axes.legend(frameon=False, fontsize="small")
    return figure

