"""Load a typed config: schema defaults <- conf/ presets <- YAML files <- `key=value` overrides.

A YAML file may derive from another one: its top-level `base: <path relative to the file>` is applied first, then
the file's own keys (torchtitan-style named recipes that change a few fields of a parent recipe).
Every error is a one-line UserError naming the bad key and the valid keys (or expected type),
raised before any work starts.

`SLIM_MAX_STEPS=N` in the environment caps every resolved config's `train.max_steps` at N, its warmup shrunk by the
same factor and at most two validations: the README's commands then run as written, in minutes
(tests/test_readme_walk.py).
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from slim.harness.config.schema import CHOICES, RANGE, REGISTRY, SlimConfig, TrainConfig
from slim.harness.config.sections import root_schema, validate_sections
from slim.harness.errors import UserError
from slim.harness.registry import check_declared

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
BASE_KEY = "base"  # a YAML file's parent recipe
# Keys that were renamed: old dotted key -> new one, so an old config fails naming the key to use instead.
RENAMED_KEYS = {"data.corpus_path": "data.path", "data.tokenizer_dir": "data.tokenizer"}
MAX_STEPS_ENV = "SLIM_MAX_STEPS"
_ANNOUNCED_CAPS: set[str] = set()

logger = logging.getLogger(__name__)


def preset_names(group: str) -> list[str]:
    """Preset files available for a group (e.g. `model` -> conf/model/*.yaml)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _valid_keys(schema: Any, dotted: str) -> list[str]:
    """Field names at the level where `dotted` points (for error messages)."""
    node = schema
    for part in dotted.split(".")[:-1]:
        match = [f for f in fields(node) if f.name == part]
        if not match or not is_dataclass(getattr(node, part)):
            break
        node = getattr(node, part)
    return [f.name for f in fields(node)]


def _key_error(schema: Any, dotted: str) -> UserError:
    if dotted in RENAMED_KEYS:
        return UserError(f"config key {dotted!r} was renamed to {RENAMED_KEYS[dotted]!r}")
    valid = _valid_keys(schema, dotted)
    leaf = dotted.split(".")[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"unknown config key {dotted!r}{hint}; valid keys here: {', '.join(valid)}")


def _merge(base: DictConfig, update: Any, schema: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as err:
        raise _key_error(schema, str(err.full_key)) from None
    except ValidationError as err:
        raise UserError(f"{source}: bad value for {err.full_key!r}: {err.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as err:
        raise UserError(f"{source}: {str(err).splitlines()[0]}") from None


def check_choices(cfg: Any, prefix: str = "") -> None:
    """Every field whose schema metadata lists its allowed values (`CHOICES`) holds one of them, every field
    naming a registry entry (`REGISTRY`) names a registered one (with the did-you-mean line), and every number with
    a `RANGE` lies in it. A default always is valid, so the values are only looked up for a changed field."""
    for spec in fields(cfg):
        value = getattr(cfg, spec.name)
        if is_dataclass(value):
            check_choices(value, f"{prefix}{spec.name}.")
        elif value == spec.default:
            continue
        elif CHOICES in spec.metadata:
            allowed = spec.metadata[CHOICES]()
            if value not in allowed:
                raise UserError(f"{prefix}{spec.name}: unknown {value!r}; valid: {', '.join(allowed)}")
        elif REGISTRY in spec.metadata:
            check_declared(spec.metadata[REGISTRY], value, f"{prefix}{spec.name}")
        elif RANGE in spec.metadata and not spec.metadata[RANGE].contains(value):
            raise UserError(f"{prefix}{spec.name}: must be {spec.metadata[RANGE].describe()}, got {value}")


def _read_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml errors come in many types
        raise UserError(f"{what}: cannot parse {path}: {str(err).splitlines()[0]}") from None


def _read_recipe(path: Path, derived: tuple[Path, ...] = ()) -> DictConfig:
    """A config file with its `base:` chain applied under it (the base named relative to the file)."""
    cfg = _read_yaml(path, "config file")
    base = cfg.pop(BASE_KEY, None) if isinstance(cfg, DictConfig) else None
    if base is None:
        return cfg
    parent = (path.parent / str(base)).resolve()
    if parent in (*derived, path.resolve()):
        raise UserError(f"config file {path}: base {base!r} derives from this file again (a cycle)")
    return OmegaConf.merge(_read_recipe(parent, (*derived, path.resolve())), cfg)


def _preset(group: str, name: str) -> DictConfig:
    valid = preset_names(group)
    if name not in valid:
        raise UserError(f"{group}: unknown preset {name!r}; valid: {', '.join(valid)}")
    return OmegaConf.create({group: _read_yaml(CONF_DIR / group / f"{name}.yaml", group)})


def cap_steps(train: TrainConfig) -> None:
    """Apply `SLIM_MAX_STEPS` (when set) to `train`: max_steps at most N, warmup_steps scaled by N / max_steps
    (rounded down, below N), val_every at most N // 2 (at least 1)."""
    raw = os.environ.get(MAX_STEPS_ENV, "")
    if not raw:
        return
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{MAX_STEPS_ENV}={raw!r}: need an integer >= 1 (or leave it unset)")
    cap = int(raw)
    if train.max_steps <= cap:
        return
    before = (train.max_steps, train.warmup_steps, train.val_every)
    train.warmup_steps = min(train.warmup_steps * cap // train.max_steps, cap - 1)
    train.val_every = max(1, min(train.val_every, cap // 2))
    train.max_steps = cap
    change = (f"{MAX_STEPS_ENV}={cap} capped train.max_steps {before[0]} -> {cap} (warmup_steps {before[1]} -> "
              f"{train.warmup_steps}, val_every {before[2]} -> {train.val_every})")
    if change not in _ANNOUNCED_CAPS:  # once per process: a grid loads one config per cell
        _ANNOUNCED_CAPS.add(change)
        logger.warning(change)


def _parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"bad override {item!r}: expected key=value, e.g. train.max_steps=100")
    return key.strip(), value


def load_config(overrides: list[str] | tuple[str, ...] = (), files: list[str] | tuple[str, ...] = ()) -> SlimConfig:
    """Resolve a config: schema defaults (the core's and the plug-ins' declared options, harness/config/sections),
    then YAML files, then `key=value` / `group=preset` overrides."""
    schema = root_schema()
    defaults = schema()
    cfg = OmegaConf.structured(schema)
    for file in files:
        cfg = _merge(cfg, _read_recipe(Path(file)), defaults, file)
    for item in overrides:
        key, value = _parse_override(item)
        if (CONF_DIR / key).is_dir() and "." not in key:
            cfg = _merge(cfg, _preset(key, value), defaults, item)
            continue
        try:
            update = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise UserError(f"bad override {item!r}: {str(err).splitlines()[0]}") from None
        cfg = _merge(cfg, update, defaults, item)
    resolved = OmegaConf.to_object(cfg)
    check_choices(resolved)
    validate_sections(resolved)
    cap_steps(resolved.train)
    return resolved


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (saved next to every artifact)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
