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
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from slim.harness import provenance
from slim.harness.config.load import load_config
from slim.harness.config.schema import NEUTRAL, SlimConfig
from slim.harness.errors import UserError
from slim.harness.grid.kinds import cell_kinds
from slim.harness.grid.spec import KIND_KEY, Axis, AxisValue, GridSpec

SEED_KEY = "train.seed"
AXES_PREFIX, SEEDS_OVERRIDE = "axes.", "seeds"  # grid overrides (select_cells), not config keys
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
    overrides: dict[str, Any] = field(default_factory=dict)  # what its axis values and seed set, by dotted key

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


def hashed_values(config: Any) -> dict[str, Any]:
    """The config tree as a dict, without the fields added after results were stored while they hold their neutral
    (as-before) value (schema NEUTRAL): adding such a field changes no key."""
    values = {}
    for spec in fields(config):
        value = getattr(config, spec.name)
        if is_dataclass(value):
            values[spec.name] = hashed_values(value)
        elif NEUTRAL not in spec.metadata or value != spec.metadata[NEUTRAL]:
            values[spec.name] = copy.deepcopy(value)
    return values


def cell_key(kind: str, config: SlimConfig) -> str:
    """16 hex digits of sha256 over the kind, `provenance.RESULTS_VERSION` and every resolved config value (defaults
    included; a field added later only when it leaves its neutral value), output paths excluded: a cell stored
    before a default changed or the version was bumped gets another key, so it is never reused."""
    stripped = copy.deepcopy(config)
    for dotted in PATH_FIELDS:
        _set(stripped, dotted, "")
    payload = json.dumps({"kind": kind, "version": provenance.RESULTS_VERSION, "config": hashed_values(stripped)},
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
    overrides = {key: typed for value in choice for key, typed in value.values.items()} | {SEED_KEY: seed}
    return Cell(key=key, spec=spec.name, kind=kind, axes=axes, seed=seed, config=config, overrides=overrides)


def _labels(text: str, where: str) -> list[str]:
    """`a`, `[a, b]` or `["Merge (router logits)", b]` -> labels as text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{where}: cannot parse {text!r} ({str(err).splitlines()[0]})") from None
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(item, (dict, list)) or item is None for item in values):
        raise UserError(f"{where}: needs a value or a non-empty list of values, got {text!r}")
    return [str(item) for item in values]


def select_cells(spec: GridSpec, overrides: list[str] | tuple[str, ...]) -> tuple[GridSpec, list[str]]:
    """Grid overrides taken out of `overrides`: `axes.<axis>=<label>` or `=[<label>, ...]` keeps only those values of
    the axis (e.g. 2 cells of a 30-cell table), `seeds=[0, 1, 2]` replaces the spec's seeds. Returns the narrowed
    spec and the config overrides left; cell keys do not change."""
    axes, seeds, rest = {axis.name: axis for axis in spec.axes}, spec.seeds, []
    for override in overrides:
        key, _, text = override.partition("=")
        if key == SEEDS_OVERRIDE:
            labels = _labels(text, override)
            if not all(label.lstrip("-").isdigit() for label in labels):
                raise UserError(f"{override}: seeds are integers")
            seeds = tuple(int(label) for label in labels)
        elif key.startswith(AXES_PREFIX):
            name = key[len(AXES_PREFIX):]
            if name not in axes:
                raise UserError(f"{override}: unknown axis {name!r}; valid: {', '.join(axes)}")
            values = {str(label): (label, values) for label, values in axes[name].values}
            wanted = _labels(text, override)
            unknown = [label for label in wanted if label not in values]
            if unknown:
                raise UserError(f"{override}: axis {name!r} has no value {unknown[0]!r}; valid: {', '.join(values)}")
            axes[name] = Axis(name, tuple(values[label] for label in dict.fromkeys(wanted)))
        else:
            rest.append(override)
    return replace(spec, axes=tuple(axes.values()), seeds=seeds), rest


def expand(spec: GridSpec, files: list[str] | None = None, overrides: list[str] | tuple[str, ...] = (),
           output_dir: str | None = None) -> list[Cell]:
    """Every cell of the grid (axes in spec order, then seeds). `files` replace the spec's `scale` recipe files;
    `overrides` (`key=value`) apply to every cell after the spec's `base`; axis values and the seed come last.
    `axes.<axis>=...` and `seeds=[...]` among them narrow the grid (`select_cells`)."""
    spec, overrides = select_cells(spec, overrides)
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
