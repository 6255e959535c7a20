"""Search specs: one YAML per Optuna study, parsed into a typed `SearchSpec` and checked before any trial.

```yaml
name: tiny-schedules              # study name; default: the file stem
scale: [conf/recipes/tiny-slimqwen.yaml, ablations/tiny.yaml]  # recipe files; recipe files on the
                                  # `slim search` command line replace them
base: {distill.loss: kd+lm}       # overrides every trial gets (dotted or nested keys)
space:                            # config key -> distribution
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  compress.experts.reducer: {type: categorical, choices: [prune, partial_preserve]}
enqueue: [{train.lr: 3.0e-3}]     # trials run first, in order (e.g. the paper's settings)
objective: {metric: val_perplexity, direction: minimize}   # a key of the distillation summary
n_trials: 20                      # in total, over all workers and reruns
seed: 0                           # worker i samples with seed + i
storage: ""                       # "" = journal file <output_dir>/study.journal (worker processes on one machine
                                  # or a shared filesystem); a path = that journal file; an RDB URL for a
                                  # cluster (postgresql://..., mysql://...); sqlite:///... is safe for one worker
output_dir: runs/search/<name>
pruner: {kind: median, monitor: val/ppl, n_startup_trials: 5, n_warmup_steps: 0}   # monitor: see MONITORS
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna

from slim.harness.config.load import load_config
from slim.harness.errors import UserError
from slim.harness.grid.cells.run import DISTILL_METRICS, validate_run
from slim.harness.grid.expand import format_override
from slim.harness.grid.spec import flatten, read_spec_mapping

SPEC_KEYS = ("name", "description", "scale", "base", "space", "enqueue", "objective", "n_trials", "seed", "storage",
             "output_dir", "pruner")
PARAM_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("minimize", "maximize")
PRUNERS = ("median", "threshold", "none")
# Objective -> the same quantity as the distillation module logs it at each validation (on train.val_batches
# batches), which the pruner compares across trials. Optuna keeps a pruned trial's last report as its value, so the
# monitor must be in the objective's unit: pruned and finished trials then both hold perplexities. An objective
# without an entry is not measured during training and cannot be pruned.
MONITORS = {"val_perplexity": "val/ppl"}
JOURNAL_FILE = "study.journal"  # the default storage, in the output dir


@dataclass(frozen=True)
class Param:
    """One search axis: a config key and the distribution its trial values come from."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """This trial's value, recorded in the study under the config key."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def samples(self) -> tuple[Any, ...]:
        """Values that stand for the whole range when the key is checked against the config schema."""
        return self.choices if self.type == "categorical" else (self.low, self.high)


@dataclass(frozen=True)
class PrunerSpec:
    """How bad trials stop early: the pruner compares `monitor`, reported at each validation, across trials."""

    kind: str = "median"
    monitor: str = ""  # "" = the objective's counterpart in MONITORS
    n_startup_trials: int = 5  # median: completed trials before any pruning
    n_warmup_steps: int = 0  # no pruning before this optimizer step
    lower: float | None = None  # threshold: prune below / above these
    upper: float | None = None


@dataclass(frozen=True)
class SearchSpec:
    """A parsed search spec plus the command line's recipe files and overrides (see the module docstring)."""

    name: str
    path: str
    space: tuple[Param, ...]
    files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    enqueue: tuple[dict[str, Any], ...] = ()
    metric: str = "val_perplexity"
    direction: str = "minimize"
    n_trials: int = 10
    seed: int = 0
    storage: str = ""
    output_dir: str = ""
    pruner: PrunerSpec = field(default_factory=PrunerSpec)

    def storage_location(self) -> str:
        """The RDB URL the spec names (it holds "://"), else the study's journal file as an absolute path."""
        if "://" in self.storage:
            return self.storage
        return str(Path(self.storage or Path(self.output_dir) / JOURNAL_FILE).resolve())


def _unknown(raw: dict[str, Any], valid: tuple[str, ...] | list[str], where: str) -> None:
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(valid)}")


def _param(key: str, raw: Any, where: str) -> Param:
    where = f"{where}.{key}"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: need a mapping like {{type: float, low: 0.0, high: 1.0}}, got {raw!r}")
    _unknown(raw, [f.name for f in fields(Param) if f.name != "key"], where)
    param = Param(key=key, **{**raw, "choices": tuple(raw.get("choices", ()))})
    if param.type not in PARAM_TYPES:
        raise UserError(f"{where}.type: unknown {param.type!r}; valid: {', '.join(PARAM_TYPES)}")
    if param.type == "categorical":
        if not param.choices or any(isinstance(choice, (dict, list)) for choice in param.choices):
            raise UserError(f"{where}.choices: need a non-empty list of scalars, got {raw.get('choices')!r}")
    elif not (isinstance(param.low, (int, float)) and isinstance(param.high, (int, float)) and param.low < param.high):
        raise UserError(f"{where}: need numbers low < high, got low={param.low!r}, high={param.high!r}")
    elif param.log and param.low <= 0:
        raise UserError(f"{where}.low: must be > 0 with log: true, got {param.low}")
    elif param.type == "int" and not (isinstance(param.low, int) and isinstance(param.high, int)):
        raise UserError(f"{where}: type int needs integer low and high, got low={param.low!r}, high={param.high!r}")
    return param


def _pruner(raw: dict[str, Any], where: str, metric: str) -> PrunerSpec:
    """The pruner, its monitor the objective's in-training counterpart (MONITORS)."""
    _unknown(raw, [f.name for f in fields(PrunerSpec)], where)
    pruner = PrunerSpec(**raw)
    if pruner.kind not in PRUNERS:
        raise UserError(f"{where}.kind: unknown {pruner.kind!r}; valid: {', '.join(PRUNERS)}")
    if pruner.kind == "none":
        return pruner
    if metric not in MONITORS:
        raise UserError(f"{where}.kind: objective.metric {metric!r} is not measured during training, so no trial can "
                        f"be pruned on it; set kind: none (prunable objectives: {', '.join(MONITORS)})")
    if pruner.monitor not in ("", MONITORS[metric]):
        raise UserError(f"{where}.monitor: {pruner.monitor!r} is not in the unit of objective.metric {metric!r} (a "
                        f"pruned trial keeps its last monitored value as its value); use {MONITORS[metric]!r}")
    pruner = PrunerSpec(**{**raw, "monitor": MONITORS[metric]})
    if pruner.kind == "threshold" and pruner.lower is None and pruner.upper is None:
        raise UserError(f"{where}: kind threshold needs lower and/or upper")
    return pruner


def _objective(raw: dict[str, Any], where: str) -> tuple[str, str]:
    _unknown(raw, ("metric", "direction"), where)
    metric, direction = raw.get("metric", "val_perplexity"), raw.get("direction", "minimize")
    if metric not in DISTILL_METRICS:
        raise UserError(f"{where}.metric: unknown {metric!r}; valid: {', '.join(DISTILL_METRICS)}")
    if direction not in DIRECTIONS:
        raise UserError(f"{where}.direction: unknown {direction!r}; valid: {', '.join(DIRECTIONS)}")
    return metric, direction


def flatten_space(space: dict[str, Any]) -> dict[str, Any]:
    """Nested or dotted config keys -> {dotted key: distribution}; a distribution is a mapping with `type`."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, dict) and "type" not in value:
            flat.update({f"{key}.{inner}": dist for inner, dist in flatten_space(value).items()})
        else:
            flat[key] = value
    return flat


def _read(path: Path) -> dict[str, Any]:
    raw = read_spec_mapping(path, "search", SPEC_KEYS)
    _unknown(raw, SPEC_KEYS, str(path))
    return raw


def _spec_key_override(overrides: list[str] | tuple[str, ...]) -> None:
    """A `key=value` naming a spec key (not a config key) gets the flag to use instead of 'unknown config key'."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in SPEC_KEYS:
            fix = f"use --n-trials {item.partition('=')[2]}" if key == "n_trials" else "edit the spec to change it"
            raise UserError(f"{item!r}: {key} is a search spec key, not a config key; {fix}")


def parse_spec(path: str | Path, files: list[str] | tuple[str, ...] = (),
               overrides: list[str] | tuple[str, ...] = (), n_trials: int | None = None) -> SearchSpec:
    """Parse a search spec; `files` (recipe files) replace its `scale`, `overrides` (`key=value`) follow its `base`,
    `n_trials` (the command line's `--n-trials`) replaces its `n_trials`."""
    path = Path(path)
    _spec_key_override(overrides)
    raw = _read(path)
    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise UserError(f"{path}: space: need a mapping config key -> {{type, low, high, log, choices}}")
    where = f"{path}: n_trials" if n_trials is None else "--n-trials"
    n_trials = raw.get("n_trials", 10) if n_trials is None else n_trials
    if not (isinstance(n_trials, int) and n_trials >= 1):
        raise UserError(f"{where}: need an integer >= 1, got {n_trials!r}")
    name = str(raw.get("name", path.stem))
    metric, direction = _objective(raw.get("objective") or {}, f"{path}: objective")
    return SearchSpec(
        name=name,
        path=str(path),
        space=tuple(_param(key, value, f"{path}: space") for key, value in flatten_space(space).items()),
        files=tuple(files) or tuple(raw.get("scale", ())),
        overrides=(*(format_override(k, v) for k, v in flatten(raw.get("base") or {}).items()), *overrides),
        enqueue=tuple(flatten(trial) for trial in raw.get("enqueue", ())),
        metric=metric,
        direction=direction,
        n_trials=n_trials,
        seed=int(raw.get("seed", 0)),
        storage=str(raw.get("storage", "")),
        output_dir=str(raw.get("output_dir", f"runs/search/{name}")),
        pruner=_pruner(raw.get("pruner") or {}, f"{path}: pruner", metric),
    )


def _check(spec: SearchSpec, items: list[str], where: str) -> None:
    try:
        validate_run(load_config([*spec.overrides, *items], files=list(spec.files)))
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def check_spec(spec: SearchSpec) -> None:
    """The base config, each space value and each enqueued trial against the config schema and the run's own
    checks (registry keys, recipe vs teacher): an unknown key or a bad value fails here, naming it, before any trial."""
    _check(spec, [], f"{spec.path}: base")
    for param in spec.space:
        for value in param.samples():
            _check(spec, [format_override(param.key, value)], f"{spec.path}: space")
    keys = [param.key for param in spec.space]
    for index, trial in enumerate(spec.enqueue):
        where = f"{spec.path}: enqueue[{index}]"
        _unknown(trial, keys, where)
        _check(spec, [format_override(k, v) for k, v in trial.items()], where)
