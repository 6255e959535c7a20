"""Expand a grid spec into cells: axes × seeds, each with its overrides, resolved config and hash key.

A cell's key is a hash of its kind, the harness's `RESULTS_VERSION` and the full resolved config (defaults
included), without the output paths (which are derived from the key), so the same cell gets the same key in every
grid, on every machine and under every launcher, and a changed default or version gives a new key.
The shared part (recipe files, `base`, command-line overrides) is resolved once and each axis value once,
each through `load_config` (OmegaConf validation costs ~0.1-0.5 s per call); a cell copies their typed values.
An axis key naming a whole preset group (`model: tiny`) replaces that section rather than merging into it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness
from harness.config.load import load_config
from harness.config.schema import SlimConfig
from harness.errors import UserError
from harness.grid.kinds import cell_kinds
from harness.grid.spec import KIND_KEY, Axis, AxisValue, GridSpec

SEED_KEY = "train.seed"
# Per-cell outputs and W&B naming: set from the cell key and spec, so left out of the hash.
PATH_FIELDS = ("run_dir", "compress.output", "distill.output", "tracking.group", "tracking.name")


@dataclass(frozen=True)
class Cell:
    """One grid cell: axis labels and seed (what reports group by) and the fully resolved config it runs."""

    key: str
    spec: str
    kind: str
    axes: dict[str, AxisValue]
    seed: int
    config: SlimConfig

    def label(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in {**self.axes, "seed": self.seed}.items())


def format_override(key: str, value: Any) -> str:
    """`key=value` for load_config: strings verbatim (so presets like `model=tiny` work), the rest as JSON."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _set(config: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    setattr(_get(config, ".".join(parents)) if parents else config, leaf, copy.deepcopy(value))


def cell_key(kind: str, config: SlimConfig) -> str:
    """16 hex digits of sha256 over the kind, `harness.RESULTS_VERSION` and every resolved config value (defaults
    included), output paths excluded: a cell stored before a default changed or the version was bumped gets
    another key, so it is never reused."""
    stripped = copy.deepcopy(config)
    for dotted in PATH_FIELDS:
        _set(stripped, dotted, "")
    payload = json.dumps({"kind": kind, "version": harness.RESULTS_VERSION, "config": asdict(stripped)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _resolve(files: list[str], overrides: list[str], where: str) -> SlimConfig:
    try:
        return load_config(overrides, files=files)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


@dataclass(frozen=True)
class _AxisChoice:
    """One axis value: its label, the kind it switches to (if any) and its typed config values by dotted key."""

    label: AxisValue
    kind: str | None
    values: dict[str, Any]


def _axis_choices(spec: GridSpec, axis: Axis, files: list[str]) -> list[_AxisChoice]:
    """Each value of `axis` resolved alone (so an error names it), keeping the typed values of its keys."""
    choices = []
    for label, overrides in axis.values:
        keys = [key for key in overrides if key != KIND_KEY]
        resolved = _resolve(files, [format_override(key, overrides[key]) for key in keys],
                            f"{spec.path}: axes.{axis.name}[{label}]")
        choices.append(_AxisChoice(label, overrides.get(KIND_KEY), {key: _get(resolved, key) for key in keys}))
    return choices


def _cell(spec: GridSpec, base: SlimConfig, choice: tuple[_AxisChoice, ...], seed: int, root: Path) -> Cell:
    config = copy.deepcopy(base)
    for value in choice:
        for key, typed in value.values.items():
            _set(config, key, typed)
    _set(config, SEED_KEY, seed)
    kind = next((value.kind for value in reversed(choice) if value.kind), spec.kind)
    key = cell_key(kind, config)
    run_dir = root / "cells" / key
    config.run_dir, config.compress.output, config.distill.output = (str(run_dir), str(run_dir / "student"),
                                                                    str(run_dir / "distilled"))
    config.tracking.group, config.tracking.name = spec.name, key  # W&B: runs grouped by grid, named by cell
    axes = {axis.name: value.label for axis, value in zip(spec.axes, choice)}
    return Cell(key=key, spec=spec.name, kind=kind, axes=axes, seed=seed, config=config)


def expand(spec: GridSpec, files: list[str] | None = None, overrides: list[str] | tuple[str, ...] = (),
           output_dir: str | None = None) -> list[Cell]:
    """Every cell of the grid (axes in spec order, then seeds). `files` replace the spec's `scale` recipe files;
    `overrides` (`key=value`) apply to every cell after the spec's `base`; axis values and the seed come last."""
    files = list(files) if files else list(spec.scale)
    _resolve(files, list(overrides), "command-line overrides")
    base = _resolve(files, [*(format_override(k, v) for k, v in spec.base.items()), *overrides], f"{spec.path}: base")
    choices = [_axis_choices(spec, axis, files) for axis in spec.axes]
    root = Path(output_dir or spec.output_dir).resolve()
    cells = [_cell(spec, base, choice, seed, root) for choice in itertools.product(*choices) for seed in spec.seeds]
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.key in seen:
            raise UserError(f"{spec.path}: cells ({seen[cell.key].label()}) and ({cell.label()}) resolve to the same "
                            f"config; make the axis values differ")
        seen[cell.key] = cell
    return cells


def validate_cells(cells: list[Cell], spec_path: str) -> None:
    """Each cell's kind-specific checks (registry keys, recipe vs teacher) before any cell runs."""
    for cell in cells:
        try:
            cell_kinds.get(cell.kind).validate(cell.config)
        except UserError as err:
            raise UserError(f"{spec_path}: cell {cell.label()}: {err}") from None
