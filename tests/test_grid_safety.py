"""Grid safety (issue 11): stale cells, one grid per folder, no orphaned workers, honest store errors, one-line
failures before any cell runs. The multi-process tests run the real CLI and wait on files or pipes, never on sleeps.
"""

from __future__ import annotations

import inspect
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from slim.harness import provenance
from slim.harness.cli.main import main
from slim.harness.config.schema import TrainConfig
from slim.harness.errors import UserError
from slim.harness.grid import ResultsStore, prepare_grid, run_grid
from slim.harness.grid.lock import grid_lock
from tests.grid_echo import BLOCK_MARKER, CURVE_POINTS, PIDS_DIR, calls, write_spec

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# The real `slim` entry point, with the test cell kinds registered first.
CLI = [sys.executable, "-c",
       "import sys, tests.grid_echo; from slim.harness.cli.main import main; sys.exit(main(sys.argv[1:]))"]
LR_AXIS = "axes:\n  train.lr: [0.1, 0.2, 0.3]\nmetrics: [value]\n"
REPORT = "report: {caption: Toy, label: tab:toy, rows: [train.lr], columns: [[value, Value]]"
BOUND_S = 180.0  # an upper bound for a condition to come true, not a timing measurement
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")


def wait_until(condition: Callable[[], bool], what: str, bound_s: float = BOUND_S) -> None:
    """Poll `condition` until it holds; fail naming `what` if it does not within `bound_s`."""
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {bound_s:.0f} s"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def published_pids(grid_dir: Path) -> list[int]:
    """The pids `test_block` cells wrote (whole files only)."""
    folder = grid_dir / PIDS_DIR
    return [int(path.read_text()) for path in folder.glob("[!.]*")] if folder.is_dir() else []


def change_default(monkeypatch: pytest.MonkeyPatch, schema: type, name: str, value: object) -> None:
    """Stand-in for a later harness release that changes one schema default."""
    names = list(inspect.signature(schema).parameters)
    defaults = list(schema.__init__.__defaults__)
    defaults[names.index(name) - (len(names) - len(defaults))] = value
    monkeypatch.setattr(schema.__init__, "__defaults__", tuple(defaults))


@pytest.mark.parametrize("change", ["default", "version"])
def test_cells_of_an_older_default_or_version_are_stale_and_rerun(tmp_path, monkeypatch, capsys, change):
    """After a schema default changes (or RESULTS_VERSION is bumped) the stored cells are named stale and rerun."""
    spec = write_spec(tmp_path, LR_AXIS)
    assert main(["grid", str(spec)]) == 0
    old_keys = [cell.key for cell in prepare_grid(spec).cells]
    if change == "default":
        change_default(monkeypatch, TrainConfig, "warmup_steps", TrainConfig().warmup_steps + 1)
    else:
        monkeypatch.setattr(provenance, "RESULTS_VERSION", provenance.RESULTS_VERSION + 1)
    capsys.readouterr()
    assert main(["grid", str(spec)]) == 0
    out = capsys.readouterr().out
    assert f"toy: 3 stale cells from an older config or harness version (or other overrides) are ignored (keys " \
           f"{', '.join(old_keys)})" in out
    assert calls(tmp_path) == ["0.1 0", "0.2 0", "0.3 0"] * 2  # recomputed, not reused
    assert not {cell.key for cell in prepare_grid(spec).cells} & set(old_keys)


def test_second_grid_on_one_folder_is_refused_naming_the_holder(tmp_path, capsys):
    """`slim grid` on a folder where another `slim grid` process runs refuses in one line naming its pid and runs
    nothing; once that grid is killed (-9) the folder is free again. (The second grid runs in this process: one
    CLI start less on a loaded machine.)"""
    spec = write_spec(tmp_path, LR_AXIS, kind="test_block")
    grid_dir = tmp_path / "grid"
    grid_dir.mkdir()
    (grid_dir / BLOCK_MARKER).touch()
    first = subprocess.Popen([*CLI, "grid", str(spec)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(published_pids(grid_dir)) == 1, "the first grid's first cell running")
        assert main(["grid", str(spec)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"slim grid: error: grid output folder {grid_dir} is in use by another `slim grid` (pid {first.pid}); "
            f"wait for it to finish or stop it, then rerun"]
        assert len(published_pids(grid_dir)) == 1  # the second grid started no cell
        first.send_signal(signal.SIGKILL)
        first.wait()
        with grid_lock(grid_dir):  # the kernel dropped the killed holder's lock
            assert (grid_dir / "grid.lock").read_text() == f"{os.getpid()}\n"
    finally:
        (grid_dir / BLOCK_MARKER).unlink(missing_ok=True)
        first.kill()
        first.wait()


@pytest.mark.slow
@linux_only
def test_workers_die_with_a_killed_grid(tmp_path):
    """kill -9 on `slim grid --workers 2` takes the two worker processes running its cells with it."""
    spec = write_spec(tmp_path, "axes:\n  train.lr: [0.1, 0.2]\nmetrics: [value]\n", kind="test_block")
    grid_dir = tmp_path / "grid"
    grid_dir.mkdir()
    (grid_dir / BLOCK_MARKER).touch()
    parent = subprocess.Popen([*CLI, "grid", str(spec), "--workers", "2"], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(published_pids(grid_dir)) == 2, "both cells running in workers", 2 * BOUND_S)
        workers = published_pids(grid_dir)
        assert parent.pid not in workers and all(alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not any(alive(pid) for pid in workers), "workers gone after their grid was killed")
    finally:
        (grid_dir / BLOCK_MARKER).unlink(missing_ok=True)  # a surviving worker finishes its cell and exits
        parent.kill()
        parent.wait()


@pytest.mark.parametrize("mode, problem", [("full", "the disk is full"), ("read-only", "it is read-only")])
def test_full_or_read_only_store_is_not_called_corrupt(tmp_path, monkeypatch, mode, problem):
    """A store that cannot grow (SQLite's own page limit stands in for a full disk) or is opened read-only fails in
    one line saying so and naming the file, not 'corrupt'; its rows stay intact."""
    grid = prepare_grid(write_spec(tmp_path, LR_AXIS))
    run_grid(grid)
    more = prepare_grid(write_spec(tmp_path, LR_AXIS), overrides=["train.max_steps=7"]).cells
    connect = sqlite3.connect

    def limited(database, *args, **kwargs):
        if mode == "read-only":
            return connect(f"file:{database}?mode=ro", *args, uri=True, **kwargs)
        connection = connect(database, *args, **kwargs)
        connection.execute("PRAGMA max_page_count = 1")  # clamped to the current size: no page can be added
        return connection

    monkeypatch.setattr(sqlite3, "connect", limited)
    with pytest.raises(UserError) as caught, ResultsStore(grid.store_path) as store:
        store.add(more)
    assert str(caught.value).startswith(f"results store {grid.store_path}: {problem} (")
    assert "corrupt" not in str(caught.value)
    monkeypatch.undo()
    assert [row["status"] for row in grid.rows()] == ["done"] * 3


@pytest.mark.parametrize("original, damaged, error", [
    (b'{"value": 1.0}', b'{"value"; 1.0}', "JSONDecodeError"),
    (b'"lr": 0.1,', b'"lr": \xff.1,', "UnicodeDecodeError"),
])
def test_damaged_row_is_named_by_key_and_store(tmp_path, original, damaged, error):
    """Bytes damaged inside one row (the file's structure intact) fail in one line naming that row and the store."""
    grid = prepare_grid(write_spec(tmp_path, LR_AXIS))
    run_grid(grid)  # closed: the WAL is checkpointed into the file
    data = grid.store_path.read_bytes()
    assert data.count(original) == 1
    grid.store_path.write_bytes(data.replace(original, damaged))
    with pytest.raises(UserError, match=f"^results store {grid.store_path}: row {grid.cells[0].key} is damaged "
                                        f"\\({error}: "):
        grid.rows()


def test_output_dir_naming_a_file_is_refused_in_one_line(tmp_path, capsys):
    """`--output-dir` naming a regular file (or a path under one) is refused by `slim grid` and `slim report`."""
    spec = write_spec(tmp_path, LR_AXIS)
    taken = tmp_path / "results.txt"
    taken.write_text("someone's notes")
    for command, target, problem in (("grid", taken, "is a file, not a directory"),
                                     ("report", taken, "is a file, not a directory"),
                                     ("grid", taken / "sub", f"is a file, so {taken / 'sub'} cannot be created there")):
        assert main([command, str(spec), "--output-dir", str(target)]) == 2
        assert capsys.readouterr().err.splitlines() == [f"slim {command}: error: --output-dir: {taken} {problem}"]
    assert taken.read_text() == "someone's notes" and not calls(tmp_path)


@pytest.mark.parametrize("section, message", [
    (f"{REPORT}, colums: []}}", r"report: unknown key 'colums' \(did you mean 'columns'\?\); valid: caption, "),
    ("report: {caption: Toy, rows: [train.lr], columns: [[value, Value]]}", r"report: missing key 'label'"),
    (f"{REPORT}, curve: {{metrc: echo/loss}}}}", r"report.curve: unknown key 'metrc' \(did you mean 'metric'\?\)"),
    (f"{REPORT}, curve: {{metric: echo/los}}}}",
     r"report.curve.metric: 'echo/los' is not logged by the grid's cells \(kind test_echo\) \(did you mean "
     r"'echo/loss'\?\); valid: echo/loss"),
    (f"{REPORT}, curve: {{metric: echo/loss, band: minmaxx}}}}", r"report.curve: band: unknown 'minmaxx'"),
])
def test_report_section_errors_are_found_before_any_cell(tmp_path, section, message):
    """Report and curve keys and the curve metric are checked when the grid starts, not after every cell ran."""
    with pytest.raises(UserError, match=message):
        prepare_grid(write_spec(tmp_path, LR_AXIS + section + "\n"))
    assert not (tmp_path / "grid").exists()


def test_curve_metric_of_a_real_kind_is_checked_against_what_training_logs(tmp_path):
    """A `run` grid's curve must name a metric distillation logs (the check runs before the teacher is read)."""
    spec = tmp_path / "run.yaml"
    report = REPORT.replace("value", "val_perplexity")
    spec.write_text(f"kind: run\naxes:\n  train.lr: [0.1]\nmetrics: [val_perplexity]\n"
                    f"{report}, curve: {{metric: val/los}}}}\n")
    with pytest.raises(UserError, match=r"report.curve.metric: 'val/los' is not logged .* \(did you mean 'val/loss'"):
        prepare_grid(spec)


@pytest.mark.parametrize("points", [1, 3])
def test_report_says_when_curve_lines_are_too_short_to_draw(points, tmp_path, capsys):
    """Lines of one point are drawn as markers and named in one warning line; lines of three draw silently."""
    spec = write_spec(tmp_path, LR_AXIS + REPORT + ", curve: {metric: echo/loss}}\n")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / CURVE_POINTS).write_text(str(points))
    assert main(["grid", str(spec)]) == 0
    capsys.readouterr()
    assert main(["report", str(spec)]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert (tmp_path / "grid" / "report" / "toy_curves.png").is_file()
    if points == 1:
        assert warnings == [f"slim report: warning: {spec}: report.curve: 3 line(s) have fewer than two 'echo/loss' "
                            f"points (runs too short to log more?), drawn as markers: 0.1, 0.2, 0.3"]
    else:
        assert warnings == []


def test_report_says_when_no_cell_logged_the_curve(tmp_path, capsys):
    """A valid curve metric that no finished cell logged gives a one-line warning; the table is still written."""
    spec = write_spec(tmp_path, LR_AXIS + REPORT + ", curve: {metric: echo/loss}}\n")
    assert main(["grid", str(spec)]) == 0
    capsys.readouterr()
    assert main(["report", str(spec)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"slim report: warning: {spec}: report.curve: no finished cell logged "
                                         f"'echo/loss' (a run too short to log it?); no curve figure written"]
    assert (tmp_path / "grid" / "report" / "toy.tex").is_file()
    assert not list((tmp_path / "grid" / "report").glob("*_curves.*"))
