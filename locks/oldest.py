"""Print pip constraints pinning each direct dependency to the lowest version pyproject.toml allows.

    python locks/oldest.py > constraints.txt     (make test-oldest)

Every requirement of the default install and of the `test` and `gpu` extras with a lower bound (`>=X`) becomes
`name==X`; exact pins need no constraint (the project states them), transitive packages are left to the resolver.
A lower bound that fails
`make test-oldest` was never tested, and is raised to one that passes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test", "gpu")
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def lowest_pins(requirements: list[str]) -> list[str]:
    """`name==lowest` for each requirement that has a lower bound."""
    pins = []
    for requirement in requirements:
        name, specifiers = REQUIREMENT.match(requirement).groups()
        for specifier in filter(None, (part.strip() for part in specifiers.split(","))):
            if specifier.startswith(">="):
                pins.append(f"{name}=={specifier[2:].strip()}")
    return pins


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [item for extra in EXTRAS
                                              for item in project["optional-dependencies"][extra]]
    print("\n".join(lowest_pins(requirements)))


if __name__ == "__main__":
    main()
