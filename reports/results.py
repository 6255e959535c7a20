"""What a report reads: one finished grid cell as plain data, and its Lightning CSV metrics.

Reports never open the results store; the store's reader hands them `CellResult`s. A run's metrics
live in `metrics/version_N/metrics.csv` (one version per (re)start, see `slim.harness.training.trainer`),
so a resumed run's curve is the versions stitched together.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

Metrics = dict[int, dict[str, float]]  # step -> {column: value}, only the cells that were logged


@dataclass(frozen=True)
class CellResult:
    """One grid cell run with one seed: its axis values, final metrics and paths to its metric curves."""

    cell: str
    axes: dict[str, str | int | float]
    seed: int
    metrics: dict[str, float]
    curves: dict[str, str] = field(default_factory=dict)  # curve name (a CSV column) -> metrics.csv or run dir


def read_metrics_csv(path: str | Path) -> Metrics:
    """Rows of one CSVLogger file keyed by step; rows sharing a step (train and val) are combined."""
    rows: Metrics = {}
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            step = int(float(record["step"]))
            logged = {key: float(value) for key, value in record.items() if key != "step" and value}
            rows.setdefault(step, {}).update(logged)
    return rows


def merge_versions(versions: list[Metrics]) -> Metrics:
    """Stitch versions in order: a resumed version replaces every step from its first step on.

    Steps an earlier version logged after the checkpoint it was resumed from were redone, so they
    are dropped even for columns the later version has not logged yet.
    """
    merged: Metrics = {}
    for rows in versions:
        if rows:
            first = min(rows)
            merged = {step: values for step, values in merged.items() if step < first}
            merged.update(rows)
    return dict(sorted(merged.items()))


def _version_number(csv_path: Path) -> int:
    return int(csv_path.parent.name.removeprefix("version_"))


def load_run_metrics(path: str | Path) -> Metrics:
    """All metrics of one run from a run dir, its `metrics` dir, or any `version_N/metrics.csv` in it.

    A file inside a `version_N` folder brings its sibling versions along, because one version of a
    resumed run is only part of the curve. A run dir whose stages are runs of their own (a progressive
    plan's `stageN/`, ZEDA's two stages) gives one curve: stages in the order they started, each shifted
    by the steps of the stages before it.
    """
    path = Path(path)
    if path.is_file() and not path.parent.name.startswith("version_"):
        return read_metrics_csv(path)
    run_dir = path.parent.parent if path.is_file() else path
    files = sorted(run_dir.glob("**/version_*/metrics.csv"), key=_version_number)
    if not files:
        raise FileNotFoundError(f"no version_*/metrics.csv under {run_dir}")
    stages: dict[Path, list[Path]] = {}
    for file in files:  # <stage run dir>/metrics/version_N/metrics.csv
        stages.setdefault(file.parent.parent.parent, []).append(file)
    merged: Metrics = {}
    offset = 0
    for stage_dir, stage_files in sorted(stages.items(), key=lambda item: min(f.stat().st_mtime for f in item[1])):
        rows = merge_versions([read_metrics_csv(file) for file in stage_files])
        merged.update({step + offset: values for step, values in rows.items()})
        offset += _stage_steps(stage_dir, rows)
    return merged


def _stage_steps(stage_dir: Path, rows: Metrics) -> int:
    """Steps a stage trained: its distill summary's count, else one past its last logged step."""
    summary = stage_dir / "distill_summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text())["steps"])
    return max(rows, default=-1) + 1


def metric_series(metrics: Metrics, column: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the steps where `column` was logged."""
    steps = [step for step, values in metrics.items() if column in values]
    return steps, [metrics[step][column] for step in steps]
