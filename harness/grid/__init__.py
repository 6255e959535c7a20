"""Ablation grids: YAML specs expanded into hashed cells, run by a launcher, recorded in a SQLite results store."""

from slim.harness.grid.expand import Cell, cell_key, expand
from slim.harness.grid.grid import Grid, prepare_grid, run_grid
from slim.harness.grid.kinds import CellKind, CellOutput, cell_kinds, register_kind
from slim.harness.grid.spec import GridSpec, load_spec
from slim.harness.grid.store import ResultsStore

__all__ = ["Cell", "CellKind", "CellOutput", "Grid", "GridSpec", "ResultsStore", "cell_key", "cell_kinds", "expand",
           "load_spec", "prepare_grid", "register_kind", "run_grid"]
