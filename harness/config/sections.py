"""Options that plug-ins declare: a method's own dataclass joins the config schema at a dotted path.

The core schema (harness/config/schema.py) names no method. A method that needs options writes a dataclass in its
own file and decorates it with `@config_options("<path>")`:
- at a path the core schema has (e.g. `compress.experts`), its fields join that node, so
  `compress.experts.intact_ratio` keeps reading as one recipe key;
- at a new path (e.g. an adaptation's own section), it becomes that node.
Each declared class is also an entry of the entry-point group `slim.options` (slim.harness.plugins), as every
plug-in package declares it: `root_schema()` loads those entries and builds the extended SlimConfig that
`load_config` resolves, in every process alike (a spawned worker unpickling a config rebuilds the same
schema). A declared class may define `validate(self)`, called on the resolved node at load (one-line UserError
naming the key).
Generated classes live in this module by name, so resolved configs pickle into spawned grid and search workers.
"""

from __future__ import annotations

import functools
from dataclasses import Field, dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, get_type_hints

from slim.harness.config.schema import SlimConfig
from slim.harness.errors import UserError
from slim.harness.plugins import OPTIONS_GROUP, describe_entry, entries, load_entry

GENERATED_PREFIX = f"Resolved{SlimConfig.__name__}"

_declared: list[tuple[str, type]] = []
_generated: dict[str, type] = {}


def config_options(path: str):
    """Class decorator: the dataclass's fields join the config node at `path` (created when the core has none)."""

    def decorator(options: type) -> type:
        if not is_dataclass(options):
            raise TypeError(f"config_options({path!r}): {options.__name__} is not a dataclass")
        if any(declared is options for _, declared in _declared):
            raise ValueError(f"config_options: {options.__name__} is declared twice")
        _declared.append((path, options))
        return options

    return decorator


@dataclass
class _NewNode:
    """The empty node a declaration at a path the core schema lacks starts from."""


def _extend(cls: type, sections: list[tuple[tuple[str, ...], type]], where: tuple[str, ...]) -> type:
    """`cls` (the node at `where`) with the sections at `where` joined and its children at deeper paths extended."""
    joined = [options for parts, options in sections if parts == where]
    taken = {item.name: ".".join(where) or "<root>" for item in fields(cls)}
    for options in joined:
        for item in fields(options):
            if item.name in taken:
                raise ValueError(f"config_options: {options.__name__} declares {'.'.join((*where, item.name))!r}, "
                                 f"which {taken[item.name]} already has")
            taken[item.name] = options.__name__
    hints = get_type_hints(cls)
    children = sorted({parts[len(where)] for parts, _ in sections if len(parts) > len(where)
                       and parts[:len(where)] == where})
    new_fields: list[tuple[str, type, Field[Any]]] = []
    for name in children:
        node = hints.get(name, _NewNode)
        if not is_dataclass(node):
            raise ValueError(f"config_options: {'.'.join((*where, name))!r} is a value, not a config node")
        child = _extend(node, sections, (*where, name))
        new_fields.append((name, child, field(default_factory=child)))
    if not joined and not new_fields:
        return cls
    name = "_".join((GENERATED_PREFIX, *where))
    generated = make_dataclass(name, new_fields, bases=(cls, *joined))
    generated.__module__, generated.__qualname__, generated.__doc__ = __name__, name, cls.__doc__
    return generated


def _publish(cls: type) -> None:
    """Make `cls` and the generated classes below it findable by name in this module."""
    if cls.__module__ == __name__:
        _generated[cls.__name__] = cls
    for name, hint in get_type_hints(cls).items():
        if is_dataclass(hint) and name in {item.name for item in fields(cls)}:
            _publish(hint)


@functools.cache
def root_schema() -> type[SlimConfig]:
    """SlimConfig with every plug-in's declared options."""
    for entry in entries(OPTIONS_GROUP):
        options = load_entry(entry, OPTIONS_GROUP)
        if not any(declared is options for _, declared in _declared):
            raise UserError(f"plug-in {describe_entry(entry)} in {OPTIONS_GROUP}: {entry.value} is not a class "
                            f"decorated with @config_options(<path>)")
    sections = [(tuple(path.split(".")), options) for path, options in _declared]
    schema = _extend(SlimConfig, sections, ())
    _publish(schema)
    return schema


def validate_sections(cfg: SlimConfig) -> None:
    """Run each declared class's `validate` on the resolved node it joined."""
    root_schema()
    for path, options in _declared:
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
        if hasattr(options, "validate"):
            options.validate(node)


def __getattr__(name: str) -> type:
    """Generated classes by name (how pickle finds them in a spawned process); other names (e.g. the import
    system's `__path__` probe) never build the schema."""
    if name.startswith(GENERATED_PREFIX):
        root_schema()
    if name in _generated:
        return _generated[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
