"""A PYTHONPATH that imports `slim.*` from a given checkout instead of the one the venv's editable install maps.

The code folders sit at the repository root and import as `slim.harness`, `slim.methods`, ... through the package
mapping in pyproject.toml, so putting a checkout's root on PYTHONPATH no longer selects its code. The README walk
(a fresh copy of the tree) and the A/B benchmarks across checkouts run children on this path instead.
"""

from __future__ import annotations

import os
from pathlib import Path

CODE_FOLDERS = ("harness", "methods", "kernels", "reports")


def python_path(tree: Path, shim: Path) -> str:
    """Link `shim/slim/<folder>` to each code folder of `tree` and return a PYTHONPATH that puts them first, then
    `tree` itself (for its `tests.*` helpers). Python finds a namespace portion on PYTHONPATH before the installed
    finder's, so every `slim.*` module resolves to `tree`'s file."""
    package = shim / "slim"
    package.mkdir(parents=True, exist_ok=True)
    for folder in CODE_FOLDERS:
        link = package / folder
        if not link.is_symlink():
            link.symlink_to(Path(tree).resolve() / folder, target_is_directory=True)
    return os.pathsep.join([str(shim), str(tree)])
