"""`slim grid`: load a spec, expand and validate every cell, then run the cells not yet done with a launcher,
holding the output folder's lock so that no other grid runs the same cells at the same time."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slim.harness.errors import UserError
from slim.harness.grid.calibration import pass_settings
from slim.harness.grid.expand import Cell, expand, format_override, validate_cells
from slim.harness.grid.invocation import record_args
from slim.harness.grid.kinds import cell_kinds
from slim.harness.grid.launch_submitit import run_submitit
from slim.harness.grid.lock import grid_lock
from slim.harness.grid.report import check_report
from slim.harness.grid.runner import run_parallel, run_sequential
from slim.harness.grid.spec import GridSpec, column_key, load_spec
from slim.harness.grid.store import ResultsStore
from slim.harness.outputs import check_work_dir
from slim.harness.provenance import mixed_software_note

LAUNCHERS = ("inprocess", "submitit")
STORE_NAME = "results.sqlite"
STALE_SHOWN = 5  # stale keys named in the note; the rest are counted


@dataclass(frozen=True)
class Grid:
    """A checked spec, its cells and where their results go."""

    spec: GridSpec
    cells: list[Cell]
    output_dir: Path
    notes: tuple[str, ...] = ()  # e.g. benchmark metrics no cell evaluates at this scale
    # the command line's recipe files and overrides, recorded by run_grid for `slim report` (harness/grid/invocation)
    files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()

    @property
    def store_path(self) -> Path:
        return self.output_dir / STORE_NAME

    def rows(self) -> list[dict[str, Any]]:
        """The store's rows of this grid's cells, in cell order (cells never started have none)."""
        with ResultsStore(self.store_path) as store:
            return store.rows([cell.key for cell in self.cells])

    def stale_keys(self) -> list[str]:
        """Keys of stored rows of this spec that match none of its cells: computed under another config or harness
        version (a changed default, `provenance.RESULTS_VERSION`, other overrides); they are never reused."""
        if not self.store_path.is_file():
            return []
        current = {cell.key for cell in self.cells}
        with ResultsStore(self.store_path) as store:
            specs = store.column("spec")
        return [key for key, spec in specs.items() if spec == self.spec.name and key not in current]

    def stale_note(self) -> str | None:
        """One line about the stale rows, or None when there are none."""
        stale = self.stale_keys()
        if not stale:
            return None
        shown = ", ".join(stale[:STALE_SHOWN]) + (f" and {len(stale) - STALE_SHOWN} more" if len(stale) > STALE_SHOWN
                                                  else "")
        return (f"{self.spec.name}: {len(stale)} stale cells from an older config or harness version (or other "
                f"overrides) are ignored (keys {shown})")

    def software_note(self) -> str | None:
        """One line naming the packages whose version differs between the finished cells, or None when they agree."""
        done = [row for row in self.rows() if row["status"] == "done"]
        what = f"{self.spec.name}: the {len(done)} finished cells"
        return mixed_software_note([row["software"] for row in done], what)


def prepare_grid(spec_path: str | Path, files: list[str] | None = None, overrides: list[str] | tuple[str, ...] = (),
                 output_dir: str | None = None) -> Grid:
    """Parse the spec, check its report section and output folder (a writable folder or absent), and resolve +
    validate every cell; raises UserError before anything runs."""
    spec = load_spec(spec_path)
    check_report(spec)
    root = Path(output_dir or spec.output_dir).resolve()
    check_work_dir(root, "--output-dir" if output_dir else f"{spec.path}: output_dir")
    cells = expand(spec, files, overrides, output_dir)
    validate_cells(cells, spec.path)
    unevaluated = check_task_metrics(spec, cells)
    note = (f"{spec.name}: benchmark metrics no cell evaluates (not in eval.tasks at this scale), left out of the "
            f"report: {', '.join(unevaluated)}")
    return Grid(without_columns(spec, unevaluated), cells, root, (note,) if unevaluated else (), tuple(files or ()),
                tuple(overrides))


def check_task_metrics(spec: GridSpec, cells: list[Cell]) -> list[str]:
    """The spec's `<task>/<metric>` benchmark metrics checked by each kind that reports them, against its cells'
    resolved configs (lm-eval's task configs, no data); returns those no cell evaluates."""
    names = [metric for metric in spec.metrics if "/" in metric]
    unevaluated = set(names)
    for kind in sorted({cell.kind for cell in cells}):
        check = cell_kinds.get(kind).task_metrics
        if names and check is not None:
            try:
                unevaluated &= set(check(names, [cell.config for cell in cells if cell.kind == kind]))
            except UserError as err:
                raise UserError(f"{spec.path}: metrics: {err}") from None
    return [name for name in names if name in unevaluated]


def without_columns(spec: GridSpec, metrics: list[str]) -> GridSpec:
    """`spec` with the report columns of `metrics` left out: a spec names the benchmarks of every scale (the tiny KJV
    tasks, the paper's lm-eval tasks) and each scale's eval.tasks picks its own."""
    if not metrics or not spec.report.get("columns"):
        return spec
    columns = [column for column in spec.report["columns"] if column_key(column) not in metrics]
    return replace(spec, report={**spec.report, "columns": columns})


def dry_run_lines(grid: Grid) -> list[str]:
    """`slim grid --dry-run`: one line per cell (key, kind, status in the store, the overrides its axis values and
    seed apply), then the grid's notes; the store is only read, and not created when absent."""
    statuses: dict[str, str] = {}
    if grid.store_path.is_file():
        with ResultsStore(grid.store_path) as store:
            statuses = store.statuses()
    counts = {status: sum(statuses.get(cell.key, "new") == status for cell in grid.cells)
              for status in ("new", "pending", "running", "done", "failed")}
    lines = [f"{grid.spec.name}: {len(grid.cells)} cells ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}), "
             f"results in {grid.store_path}; nothing run (--dry-run)"]
    for cell in grid.cells:
        overrides = " ".join(format_override(key, value) for key, value in cell.overrides.items())
        lines.append(f"  {cell.key}  {cell.kind:<9} {statuses.get(cell.key, 'new'):<8} {overrides}")
    calibrating = [cell.config for cell in grid.cells
                   if cell_kinds.get(cell.kind).calibrates and not cell.config.compress.stats]
    # by teacher path, not file contents: a listing reads no weights (the cells' pass key hashes them)
    passes = {json.dumps([config.compress.teacher, pass_settings(config)], sort_keys=True) for config in calibrating}
    if calibrating:
        lines.append(f"{grid.spec.name}: {len(calibrating)} cells calibrate in {len(passes)} shared pass"
                     f"{'es' if len(passes) > 1 else ''} (one per teacher, calibration and data config)")
    return lines + list(grid.notes)


def run_grid(grid: Grid, launcher: str = "inprocess", workers: int = 1, cluster: str | None = None) -> list[dict]:
    """Run every cell whose row is not `done` and return the grid's rows. `workers` > 1 runs in-process cells
    in that many worker processes; launcher `submitit` sends each cell as a job (`cluster` picks the executor:
    slurm, local, or auto-detected when None). A grid already running on the same output folder is refused."""
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher: unknown {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    if workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    with grid_lock(grid.output_dir):
        record_args(grid.output_dir, grid.spec.name, list(grid.files), list(grid.overrides))
        with ResultsStore(grid.store_path) as store:
            store.add(grid.cells)
            statuses = store.statuses()
        todo = [cell for cell in grid.cells if statuses[cell.key] != "done"]
        store_path = str(grid.store_path)
        if todo and launcher == "submitit":
            run_submitit(store_path, todo, grid.spec.slurm, grid.output_dir / "submitit", cluster)
        elif todo and workers > 1:
            run_parallel(store_path, todo, workers)
        elif todo:
            run_sequential(store_path, todo)
        return grid.rows()
