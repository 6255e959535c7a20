"""`slim report`: the grid's finished rows as `slim.reports.CellResult`s, rendered with the spec's `report` section.

The section is checked at `slim grid` start (`check_report`), so a typo in it or in its curve metric is found
before any cell runs, not after all of them.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slim.harness.errors import UserError
from slim.harness.grid.kinds import cell_kinds
from slim.harness.grid.spec import GridSpec
from slim.harness.outputs import check_work_dir

if TYPE_CHECKING:
    from slim.harness.grid.grid import Grid
    from slim.reports.curves import CurveSpec
    from slim.reports.spec import TableSpec

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
    from slim.reports.results import CellResult

    return [
        CellResult(cell=row["key"], axes=row["axes"], seed=row["seed"], metrics=row["metrics"],
                   curves={curve_metric: row["artifacts"]["metrics"]}
                   if curve_metric and "metrics" in row["artifacts"] else {})
        for row in rows if row["status"] == "done"
    ]


def _build(cls: type, values: Any, where: str, fixed: dict[str, Any] | None = None,
           extra: tuple[str, ...] = ()) -> Any:
    """`cls(**fixed, **values)` with unknown and missing keys named in one line; `extra` are keys of `values` that
    the caller consumes itself."""
    fixed = fixed or {}
    if not isinstance(values, dict):
        raise UserError(f"{where}: needs a mapping, got {values!r}")
    valid = [field.name for field in fields(cls) if field.name not in fixed] + list(extra)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{where}: unknown key {unknown[0]!r}{hint}; valid: {', '.join(valid)}")
    missing = [field.name for field in fields(cls) if field.default is MISSING and field.default_factory is MISSING
               and field.name not in fixed and field.name not in values]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    try:
        return cls(**fixed, **{key: value for key, value in values.items() if key not in extra})
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None


def _check_curve_metric(spec: GridSpec, metric: str) -> None:
    """The curve metric must be one the grid's cell kinds log (`CellKind.curves`, shell-style patterns)."""
    patterns = sorted({pattern for kind in spec.kinds() for pattern in cell_kinds.get(kind).curves})
    if not any(fnmatch.fnmatchcase(metric, pattern) for pattern in patterns):
        close = difflib.get_close_matches(metric, patterns, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{spec.path}: report.curve.metric: {metric!r} is not logged by the grid's cells (kind "
                        f"{', '.join(sorted(spec.kinds()))}){hint}; valid: {', '.join(patterns) or 'none'}")


def report_specs(spec: GridSpec, teacher: dict[str, float] | None = None) -> tuple[TableSpec, CurveSpec | None]:
    """The spec's `report` section as a table and an optional curve, every key and the curve metric checked;
    `teacher` is the teacher row when the section takes it from the cells (`teacher_from`)."""
    from slim.reports.curves import CurveSpec
    from slim.reports.spec import TableSpec

    section = dict(spec.report)
    curve = None
    if CURVE_KEY in section:
        curve = _build(CurveSpec, section[CURVE_KEY], f"{spec.path}: report.curve")
        _check_curve_metric(spec, curve.metric)
    if TEACHER_FROM_KEY in section:
        section["teacher"] = teacher
    table = _build(TableSpec, section, f"{spec.path}: report", {"name": spec.name}, (CURVE_KEY, TEACHER_FROM_KEY))
    return table, curve


def check_report(spec: GridSpec) -> None:
    """Refuse a bad `report` section at grid start (unknown or missing keys, bad values, unlogged curve metric)."""
    if spec.report:
        report_specs(spec)


def no_curve_note(grid: Grid, paths: dict[str, Path]) -> str | None:
    """One line when the spec asks for a curve that came out empty or thin: no finished cell logged its metric (so
    no figure was written), or some lines hold fewer than two points (a run too short to log more: drawn as a
    marker)."""
    from slim.reports.curves import build_lines

    table, curve = report_specs(grid.spec)
    if curve is None:
        return None
    if "png" not in paths:
        return (f"{grid.spec.path}: report.curve: no finished cell logged {curve.metric!r} (a run too short to log "
                f"it?); no curve figure written")
    lines = build_lines(cell_results(grid.rows(), curve.metric), table, curve)
    thin = [line.label for line in lines if len(line.steps) < 2]
    if not thin:
        return None
    return (f"{grid.spec.path}: report.curve: {len(thin)} line(s) have fewer than two {curve.metric!r} points (runs "
            f"too short to log more?), drawn as markers: {', '.join(thin)}")


def grid_results(grid: Grid, out_dir: Path, field: str) -> tuple[list, TableSpec, CurveSpec | None]:
    """The grid's finished cells as CellResults with the spec's table and curve, once the grid has something to render
    and `out_dir` (named `field`) can be written, or a one-line UserError."""
    if not grid.spec.report:
        raise UserError(f"{grid.spec.path}: no `report` section; nothing to render")
    if not grid.store_path.is_file():
        raise UserError(f"{grid.spec.path}: no results store at {grid.store_path}; run `slim grid` first")
    check_work_dir(out_dir, field)
    rows = grid.rows()
    teacher_from = grid.spec.report.get(TEACHER_FROM_KEY)
    table, curve = report_specs(grid.spec, teacher_row(rows, teacher_from) if teacher_from else None)
    results = cell_results(rows, curve.metric if curve else None)
    if not results:
        raise UserError(f"{grid.spec.path}: no finished cells in {grid.store_path}; run `slim grid` first")
    return results, table, curve


def write_grid_report(grid: Grid, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the spec's table (and loss curves when it names a curve) from the store to `out_dir`
    (default `<grid output>/report`)."""
    from slim.reports.render import write_report

    field = "--out" if out_dir else "--output-dir"  # the default folder lies in the grid folder
    out_dir = Path(out_dir or grid.output_dir / "report")
    results, table, curve = grid_results(grid, out_dir, field)
    return write_report(results, table, out_dir, curve=curve)


def write_grid_markdown(grid: Grid, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the spec's table as `<name>.md` and the rows it came from as `<name>.json` to `out_dir` (default
    `<grid output>/report`), e.g. docs/results/ for the README's tables."""
    from slim.reports.markdown import write_markdown_report

    out_dir = Path(out_dir or grid.output_dir / "report")
    results, table, _ = grid_results(grid, out_dir, "--out")
    versions = sorted({row["code_version"] or "" for row in grid.rows() if row["status"] == "done"})
    source = {"spec": _shown(grid.spec.path), "store": _shown(grid.store_path), "code_versions": versions}
    return write_markdown_report(results, table, out_dir, source)


def _shown(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it (so a committed file names no home folder)."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
