"""Grid specs: one YAML per ablation table, parsed into a typed `GridSpec` and checked before any cell runs.

```yaml
name: table3                      # default: the file stem; names the output folder and the report
kind: run                         # cell kind (harness/grid/cells): run | compress | ...
scale: [conf/recipes/tiny-slimqwen.yaml, ablations/tiny.yaml]  # recipe files sizing the grid; recipe
                                  # files on the `slim grid` command line replace them (real checkpoints)
base: {distill.lambda_schedule: linear}   # overrides every cell gets (dotted or nested keys)
axes:
  distill.loss: [lm, kd, full]    # a config key with a list: one cell per value
  init:                           # a named axis: label -> overrides (`kind` may switch the cell kind)
    scratch: {distill.init: scratch}
    pruned: {distill.init: pruned}
seeds: [0, 1]                     # sets train.seed; reports show mean ± std across seeds
metrics: [val_perplexity]         # checked against every kind the cells use
slurm: {partition: gpu, timeout_min: 1440, cpus_per_task: 16, mem_gb: 200, array_parallelism: 8}
report: {caption: ..., label: ..., rows: [init, distill.loss], columns: [[val_perplexity, PPL, false]]}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from slim.harness.errors import UserError
from slim.harness.grid.kinds import CellKind, cell_kinds

AxisValue = str | int | float | bool
SPEC_KEYS = ("name", "description", "kind", "scale", "base", "axes", "seeds", "metrics", "slurm", "output_dir",
             "report")
KIND_KEY = "kind"


@dataclass(frozen=True)
class Axis:
    """One grid dimension: each value is a label (what reports show) and the overrides it applies."""

    name: str
    values: tuple[tuple[AxisValue, dict[str, Any]], ...]


@dataclass(frozen=True)
class SlurmParams:
    """Slurm job-array settings; nodes and GPUs per node come from each cell's train.num_nodes / train.devices."""

    partition: str = ""
    timeout_min: int = 24 * 60
    cpus_per_task: int = 8
    mem_gb: float = 0.0  # 0 = the partition's default
    array_parallelism: int = 16
    account: str = ""  # sbatch --account
    qos: str = ""  # sbatch --qos
    constraint: str = ""  # sbatch --constraint (e.g. a GPU model)
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load, env, ...)
    signal_delay_s: int = 120  # seconds before the time limit Slurm warns the job (submitit then requeues it)


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid spec (see the module docstring for the YAML form)."""

    name: str
    path: str
    kind: str
    scale: tuple[str, ...] = ()
    base: dict[str, Any] = field(default_factory=dict)
    axes: tuple[Axis, ...] = ()
    seeds: tuple[int, ...] = (0,)
    metrics: tuple[str, ...] = ()
    slurm: SlurmParams = field(default_factory=SlurmParams)
    output_dir: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def kinds(self) -> set[str]:
        """Every cell kind the grid uses (the spec's, and any an axis value switches to)."""
        return {self.kind} | {overrides[KIND_KEY] for axis in self.axes for _, overrides in axis.values
                              if KIND_KEY in overrides}


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested or dotted mapping -> {dotted key: leaf value}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _axis(name: str, values: Any, where: str) -> Axis:
    if isinstance(values, list) and values and all(not isinstance(v, (dict, list)) for v in values):
        return Axis(name, tuple((value, {name: value}) for value in values))
    if isinstance(values, dict) and values and all(isinstance(v, dict) for v in values.values()):
        return Axis(name, tuple((label, flatten(overrides)) for label, overrides in values.items()))
    raise UserError(f"{where}: axis {name!r} needs a non-empty list of values (for a config key) or a mapping "
                    f"label -> overrides, got {values!r}")


def _slurm(raw: dict[str, Any], where: str) -> SlurmParams:
    valid = [f.name for f in fields(SlurmParams)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown slurm key {unknown[0]!r}; valid: {', '.join(valid)}")
    return SlurmParams(**raw)


def column_key(column: Any) -> str:
    return column["key"] if isinstance(column, dict) else column[0] if isinstance(column, list) else column


def reports_metric(kind: CellKind, metric: str) -> bool:
    """Whether cells of `kind` may report `metric`: one it lists, or a `<task>/<metric>` benchmark score when it has
    task metrics (checked against lm-eval once the cells resolve: slim.harness.grid.grid.prepare_grid)."""
    return metric in kind.metrics or (kind.task_metrics is not None and "/" in metric)


def check_spec(spec: GridSpec) -> None:
    """Kinds, metric names and report axes/columns, each error naming the bad entry and the valid ones. A metric
    needs one kind of the grid that reports it (rows of the other kinds show a dash)."""
    kinds = sorted(spec.kinds())
    for kind in kinds:
        cell_kinds.validate(kind, f"{spec.path}: kind")
    for metric in spec.metrics:
        if not any(reports_metric(cell_kinds.get(kind), metric) for kind in kinds):
            declared = list(dict.fromkeys(name for kind in kinds for name in cell_kinds.get(kind).metrics))
            benchmarks = (" or <task>/<metric>[,<filter>] of an lm-eval task"
                          if any(cell_kinds.get(kind).task_metrics for kind in kinds) else "")
            raise UserError(f"{spec.path}: metrics: unknown metric {metric!r} for kind "
                            f"{', '.join(map(repr, kinds))}; valid: {', '.join(declared)}{benchmarks}")
    axis_names = [axis.name for axis in spec.axes]
    for axis in spec.report.get("rows", []):
        if axis not in axis_names:
            raise UserError(f"{spec.path}: report.rows: unknown axis {axis!r}; valid: {', '.join(axis_names)}")
    for column in spec.report.get("columns", []):
        if column_key(column) not in spec.metrics:
            raise UserError(f"{spec.path}: report.columns: metric {column_key(column)!r} is not in the spec's "
                            f"metrics: {', '.join(spec.metrics)}")
    for column, source in spec.report.get("teacher_from", {}).items():
        if column not in spec.metrics or source not in spec.metrics:
            raise UserError(f"{spec.path}: report.teacher_from: {column!r}: {source!r} needs both metrics in the "
                            f"spec's metrics: {', '.join(spec.metrics)}")


def read_spec_mapping(path: Path, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The YAML mapping of a `what` spec ("grid", "search"), or one UserError: missing file, bad YAML, no mapping."""
    if not path.is_file():
        raise UserError(f"{what} spec: file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # noqa: BLE001 - yaml and interpolation errors come in many types
        raise UserError(f"{what} spec: cannot parse {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a {what} spec is a mapping with keys {', '.join(keys)}")
    return raw


def load_spec(path: str | Path) -> GridSpec:
    """Parse and check a grid spec YAML; config keys are checked when the grid is expanded."""
    path = Path(path)
    raw = read_spec_mapping(path, "grid", SPEC_KEYS)
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown spec key {unknown[0]!r}; valid: {', '.join(SPEC_KEYS)}")
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(seed, int) for seed in seeds)):
        raise UserError(f"{path}: seeds: need a non-empty list of integers, got {seeds!r}")
    name = str(raw.get("name", path.stem))
    spec = GridSpec(
        name=name,
        path=str(path),
        kind=str(raw.get("kind", "run")),
        scale=tuple(raw.get("scale", ())),
        base=flatten(raw.get("base") or {}),
        axes=tuple(_axis(axis, values, f"{path}: axes") for axis, values in (raw.get("axes") or {}).items()),
        seeds=tuple(seeds),
        metrics=tuple(raw.get("metrics", ())),
        slurm=_slurm(raw.get("slurm") or {}, f"{path}: slurm"),
        output_dir=str(raw.get("output_dir", f"runs/grids/{name}")),
        report=raw.get("report") or {},
        description=str(raw.get("description", "")),
    )
    check_spec(spec)
    return spec
