"""A cheap grid cell kind for tests/test_grid.py, in its own light module so that worker processes and
submitit jobs, which import it to unpickle the kind, do not import the heavy test fixtures."""

from __future__ import annotations

from pathlib import Path

from harness.config.schema import SlimConfig
from harness.grid import CellOutput, register_kind

KILL_MARKER = "kill-armed"


class SimulatedKill(BaseException):
    """Stands in for SIGKILL / Ctrl-C: not an Exception, so the runner must not record it as a cell failure."""


def _grid_dir(cfg: SlimConfig) -> Path:
    return Path(cfg.run_dir).parents[1]


@register_kind("test_echo", metrics=("value",))
def echo_cell(cfg: SlimConfig) -> CellOutput:
    """Cheap cell: value = 10 lr + seed; lr 0.5 fails; lr 0.2 is 'killed' once when the grid folder is armed."""
    grid_dir = _grid_dir(cfg)
    with open(grid_dir / "calls.log", "a") as log:
        log.write(f"{cfg.train.lr} {cfg.train.seed}\n")
    if cfg.train.lr == 0.5:
        raise ValueError("bad cell")
    if cfg.train.lr == 0.2 and (grid_dir / KILL_MARKER).exists():
        (grid_dir / KILL_MARKER).unlink()
        raise SimulatedKill
    return CellOutput(metrics={"value": 10 * cfg.train.lr + cfg.train.seed}, artifacts={"run_dir": cfg.run_dir})
