"""`slim methods`: every plug-in family with its keys, read from the installed entry points.

Names come from entry-point metadata alone (no import: fast, no torch), so a third-party package's methods are
listed beside the built-in ones as soon as it is installed. With `docs` each family's entries are imported and the
first line of each entry's docstring is shown; an entry whose module registered nothing (an optional dependency
missing) is listed as unavailable.
"""

from __future__ import annotations

from slim.harness.plugins import GROUPS, entries, load_plugins
from slim.harness.registry import all_registries


def format_catalog(docs: bool = False) -> str:
    """One line per family (`family [group]: name, name`), or with `docs` a header and `  name  doc` per entry."""
    if docs:
        load_plugins()  # every entry imported, so each family's registry holds what it registered
    lines = []
    for group, family in GROUPS.items():
        names = [entry.name for entry in entries(group)]
        if not docs:
            lines.append(f"{family} [{group}]: {', '.join(names)}")
            continue
        registry = all_registries().get(family)
        described = dict(registry.describe()) if registry is not None else {}
        lines.append(f"{family} [{group}]:")
        width = max(map(len, names), default=0)
        lines += [f"  {name:<{width}}  {described.get(name, '(unavailable here: its module registered nothing)')}"
                  for name in names]
    return "\n".join(lines)
