"""Cheap grid cell kinds and spec helpers for tests/test_grid.py and tests/test_grid_safety.py, in their own light
module so that worker processes and submitit jobs, which import it to unpickle the kind, do not import the heavy
test fixtures."""

from __future__ import annotations

import os
import time
from pathlib import Path

from slim.harness.config.schema import SlimConfig
from slim.harness.grid import CellOutput, register_kind

KILL_MARKER = "kill-armed"
BLOCK_MARKER = "block"  # while this file is in the grid folder, `test_block` cells wait
PIDS_DIR = "pids"  # `test_block` cells write <grid>/pids/<cell key> = their pid
BLOCK_BOUND_S = 600.0  # a blocked cell gives up after this, so a failing test leaves no process behind for long
CURVE_POINTS = "curve-points"  # while this file is in the grid folder, `test_echo` cells log that many echo/loss points


def write_spec(tmp_path: Path, body: str, name: str = "spec.yaml", kind: str = "test_echo") -> Path:
    """A grid spec `toy` of `kind` with its output in `tmp_path/grid`, plus `body` (axes, metrics, report...)."""
    path = tmp_path / name
    path.write_text(f"name: toy\nkind: {kind}\noutput_dir: {tmp_path / 'grid'}\n{body}")
    return path


def calls(tmp_path: Path) -> list[str]:
    """The `test_echo` cells run so far in `tmp_path/grid`, one "lr seed" line each."""
    log = tmp_path / "grid" / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


class SimulatedKill(BaseException):
    """Stands in for SIGKILL / Ctrl-C: not an Exception, so the runner must not record it as a cell failure."""


def _grid_dir(cfg: SlimConfig) -> Path:
    return Path(cfg.run_dir).parents[1]


@register_kind("test_echo", metrics=("value",), curves=("echo/loss",))
def echo_cell(cfg: SlimConfig) -> CellOutput:
    """Cheap cell: value = 10 lr + seed; lr 0.5 fails; lr 0.2 is 'killed' once when the grid folder is armed.
    It declares the curve `echo/loss` and logs none, like a run too short to reach its first validation, unless the
    grid folder holds CURVE_POINTS."""
    grid_dir = _grid_dir(cfg)
    artifacts = {"run_dir": cfg.run_dir}
    if (grid_dir / CURVE_POINTS).exists():
        points = int((grid_dir / CURVE_POINTS).read_text())
        metrics = Path(cfg.run_dir) / "metrics" / "version_0" / "metrics.csv"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text("step,echo/loss\n" + "".join(f"{step},{1.0 / step}\n" for step in range(1, points + 1)))
        artifacts["metrics"] = str(metrics.parent.parent)
    print(f"echo cell lr={cfg.train.lr}")
    with open(grid_dir / "calls.log", "a") as log:
        log.write(f"{cfg.train.lr} {cfg.train.seed}\n")
    if cfg.train.lr == 0.5:
        raise ValueError("bad cell")
    if cfg.train.lr == 0.2 and (grid_dir / KILL_MARKER).exists():
        (grid_dir / KILL_MARKER).unlink()
        raise SimulatedKill
    return CellOutput(metrics={"value": 10 * cfg.train.lr + cfg.train.seed}, artifacts=artifacts)


@register_kind("test_block", metrics=("value",))
def block_cell(cfg: SlimConfig) -> CellOutput:
    """Publishes its pid (written whole, then renamed), then waits while the grid folder holds BLOCK_MARKER."""
    pids = _grid_dir(cfg) / PIDS_DIR
    pids.mkdir(exist_ok=True)
    partial = pids / f".{cfg.tracking.name}"
    partial.write_text(str(os.getpid()))
    partial.rename(pids / cfg.tracking.name)
    deadline = time.monotonic() + BLOCK_BOUND_S
    while (_grid_dir(cfg) / BLOCK_MARKER).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return CellOutput(metrics={"value": cfg.train.lr})
