"""One registry type for every pluggable family (criteria, reducers, loss mixes, model families, ...).

Entries register themselves with a decorator in their own module; a registry finds those modules through its
entry-point group (slim.harness.plugins), the one discovery mechanism for built-in and third-party entries alike,
or holds only what code registers into it directly (no group). The registry rejects
duplicates, suggests the closest key on a typo and lists entries with their one-line docs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from slim.harness.errors import UserError

T = TypeVar("T")

_ALL_REGISTRIES: dict[str, "Registry"] = {}


class Registry(Generic[T]):
    """Name -> implementation map for one method family."""

    def __init__(self, family: str, group: str | None = None) -> None:
        """On first lookup the modules of entry-point `group` are imported, so entries self-register."""
        if family in _ALL_REGISTRIES:
            raise ValueError(f"registry family {family!r} already exists")
        self.family = family
        self.group = group
        self._entries: dict[str, T] = {}
        self._unavailable: dict[str, str] = {}  # declared entries whose module registered nothing here
        self._loaded = group is None
        _ALL_REGISTRIES[family] = self

    @classmethod
    def of_group(cls, group: str) -> Registry:
        """The registry of a plug-in entry-point group (slim.harness.plugins.GROUPS), named as the group says."""
        from slim.harness.plugins import GROUPS

        return cls(GROUPS[group], group=group)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@criteria.register("reap")`."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family}: duplicate registration of {name!r}")
            self._entries[name] = obj
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from slim.harness.plugins import describe_entry, entries, load_entry

        for entry in entries(self.group):
            load_entry(entry, self.group)
            if entry.name not in self._entries:  # e.g. a kernel whose optional dependency is missing
                self._unavailable[entry.name] = describe_entry(entry)

    def keys(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def declared(self) -> list[str]:
        """Every key, without importing anything: the group's declared entry names until its modules are loaded
        (entry name and registered key are one; slim.harness.plugins), plus what code registered directly."""
        if self._loaded:
            return self.keys()
        from slim.harness.plugins import entries

        return sorted({entry.name for entry in entries(self.group)} | set(self._entries))

    def check_declared(self, name: str, field: str) -> str:
        """`validate` against the declared names only, importing nothing: the config check at load, which must
        answer before torch is imported. A declared entry that cannot load is refused when it is first used."""
        return _refuse_unknown(self.family, name, field, self.declared())

    def validate(self, name: str, field: str) -> str:
        """Raise a one-line UserError naming `field` and the valid keys when `name` is unknown, or declared but
        unavailable (its module registered nothing: an optional dependency missing)."""
        keys = self.keys()
        if name in self._unavailable:
            raise UserError(f"{field}: {self.family} {name!r} is not available here: its plug-in "
                            f"{self._unavailable[name]} registered nothing (an optional dependency missing?)")
        return _refuse_unknown(self.family, name, field, keys)

    def get(self, name: str, field: str | None = None) -> T:
        self.validate(name, field or self.family)
        return self._entries[name]

    def items(self) -> Iterator[tuple[str, T]]:
        for key in self.keys():
            yield key, self._entries[key]

    def describe(self) -> list[tuple[str, str]]:
        """(name, first docstring line) for every entry."""
        rows = []
        for key, obj in self.items():
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            rows.append((key, doc[0] if doc else ""))
        return rows


def _refuse_unknown(family: str, name: str, field: str, keys: list[str]) -> str:
    """`name`, or a one-line UserError naming `field`, the closest key and the valid ones."""
    if name not in keys:
        close = difflib.get_close_matches(name, keys, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{field}: unknown {family} {name!r}{hint}; valid: {', '.join(keys)}")
    return name


def check_declared(group: str, name: str, field: str) -> str:
    """Registry.check_declared for the registry of entry-point `group`, importing nothing: the registry itself once
    its module is loaded (code may register into it directly), else the group's declared entry names."""
    from slim.harness.plugins import GROUPS, entries

    registry = _ALL_REGISTRIES.get(GROUPS[group])
    if registry is not None:
        return registry.check_declared(name, field)
    return _refuse_unknown(GROUPS[group], name, field, sorted(entry.name for entry in entries(group)))


def all_registries() -> dict[str, Registry]:
    return dict(_ALL_REGISTRIES)
