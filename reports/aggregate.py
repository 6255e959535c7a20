"""Group cell results into table rows (one per row-axes combination, seeds pooled) and pick the best cells."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from slim.reports.results import CellResult
from slim.reports.spec import RowKey, TableSpec


@dataclass(frozen=True)
class Stat:
    """Mean over seeds, and the sample standard deviation when there is more than one seed."""

    mean: float
    std: float | None

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class Row:
    """One table row: its key and a Stat per metric that any of its seeds reported."""

    key: RowKey
    cells: dict[str, Stat]
    average: float | None


def row_key(result: CellResult, spec: TableSpec) -> RowKey:
    """The row a result belongs to; a result missing a row axis is a grid/spec mismatch."""
    missing = [axis for axis in spec.rows if axis not in result.axes]
    if missing:
        raise ValueError(f"rows: cell {result.cell!r} has no axis {missing}; its axes are {sorted(result.axes)}")
    return tuple(str(result.axes[axis]) for axis in spec.rows)


def group_results(results: list[CellResult], spec: TableSpec) -> dict[RowKey, list[CellResult]]:
    """Results per row key in paper order: `row_order` first (even rows without results), then the rest."""
    groups: dict[RowKey, list[CellResult]] = {key: [] for key in spec.ordered_keys()}
    for result in results:
        groups.setdefault(row_key(result, spec), []).append(result)
    return groups


def average_of(cells: dict[str, Stat | float], spec: TableSpec) -> float | None:
    """Mean of the row's column values; None when a column is missing (an average of fewer is no average)."""
    if not spec.average or any(column.key not in cells for column in spec.columns):
        return None
    return statistics.fmean(_mean(cells[column.key]) for column in spec.columns)


def _mean(value: Stat | float) -> float:
    return value.mean if isinstance(value, Stat) else value


def build_rows(results: list[CellResult], spec: TableSpec) -> list[Row]:
    """One Row per row key, each metric pooled over the seeds that reported it."""
    rows = []
    for key, members in group_results(results, spec).items():
        cells = {}
        for column in spec.columns:
            values = [member.metrics[column.key] for member in members if column.key in member.metrics]
            if values:
                cells[column.key] = Stat.of(values)
        rows.append(Row(key, cells, average_of(cells, spec)))
    return rows


def best_rows(values: list[float | None], fmt: str, higher_is_better: bool) -> set[int]:
    """Indices of the best values; values equal as printed tie, so every tied cell is bold."""
    present = {index: value for index, value in enumerate(values) if value is not None}
    if not present:
        return set()
    best = fmt.format((max if higher_is_better else min)(present.values()))
    return {index for index, value in present.items() if fmt.format(value) == best}
