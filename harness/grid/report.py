"""`slim report`: the grid's finished rows as `reports.CellResult`s, rendered with the spec's `report` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.grid.grid import Grid

CURVE_KEY = "curve"
# report.teacher_from: {column metric: cell metric holding the teacher's value}, e.g. the teacher perplexity every
# `run` cell measures; the teacher row takes it from the first finished cell that has it.
TEACHER_FROM_KEY = "teacher_from"


def teacher_row(rows: list[dict[str, Any]], teacher_from: dict[str, str]) -> dict[str, float] | None:
    """The teacher row's metrics, read from the finished cells (None when no cell reports them)."""
    found = {}
    for column, source in teacher_from.items():
        values = [row["metrics"][source] for row in rows if row["status"] == "done" and source in row["metrics"]]
        if values:
            found[column] = values[0]
    return found or None


def cell_results(rows: list[dict[str, Any]], curve_metric: str | None = None) -> list:
    """Finished rows as CellResults; a row whose cell logged metric CSVs gets them as `curve_metric`'s curve."""
    from reports import CellResult

    return [
        CellResult(cell=row["key"], axes=row["axes"], seed=row["seed"], metrics=row["metrics"],
                   curves={curve_metric: row["artifacts"]["metrics"]}
                   if curve_metric and "metrics" in row["artifacts"] else {})
        for row in rows if row["status"] == "done"
    ]


def write_grid_report(grid: Grid, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the spec's table (and loss curves when it names a curve) from the store to `out_dir`
    (default `<grid output>/report`)."""
    from reports import CurveSpec, TableSpec, write_report

    section = dict(grid.spec.report)
    if not section:
        raise UserError(f"{grid.spec.path}: no `report` section; nothing to render")
    if not grid.store_path.is_file():
        raise UserError(f"{grid.spec.path}: no results store at {grid.store_path}; run `slim grid` first")
    curve = CurveSpec(**section.pop(CURVE_KEY)) if CURVE_KEY in section else None
    rows = grid.rows()
    if TEACHER_FROM_KEY in section:
        section["teacher"] = teacher_row(rows, section.pop(TEACHER_FROM_KEY))
    try:
        table = TableSpec(**{"name": grid.spec.name, **section})
    except (TypeError, ValueError) as err:
        raise UserError(f"{grid.spec.path}: report: {err}") from None
    results = cell_results(rows, curve.metric if curve else None)
    if not results:
        raise UserError(f"{grid.spec.path}: no finished cells in {grid.store_path}; run `slim grid` first")
    return write_report(results, table, out_dir or grid.output_dir / "report", curve=curve)
