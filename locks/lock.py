"""Re-resolve the committed lock: every package, direct and transitive, pinned `name==version`.

    make lock            (runs this with a throwaway venv's newest pip)

It resolves through the ordinary `pip` client with `--dry-run --report`, so it sees exactly what `pip install` sees
on these machines (their pip configuration: local wheel sources, the CPU torch wheel, the torch cap). One
resolution of the largest install (`.[test,gpu]`, what `make test` and CI install) fixes every version; the
smaller installs are resolved again under it as constraints, so a package has one version in all three files:

    locks/test.txt   the project with its `test` and `gpu` extras   (make test, .ci/run)
    locks/demo.txt   the default install                              (make demo)
    locks/gpu.txt    the default install with the `gpu` extra         (a GPU machine)

pip and setuptools are pinned too: `locks/sync.py` installs the project with `--no-build-isolation`, so its build
backend is the locked setuptools, not the newest one on the index.
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"test": ".[test,gpu]", "demo": ".", "gpu": ".[gpu]"}
TOOLING = ("pip", "setuptools")
PROJECT = "slimqwen-harness"


def resolve(target: str, constraints: Path | None) -> dict[str, str]:
    """{name: version} of everything `pip install target` would install into an empty environment."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(report), target, *TOOLING]
        if constraints is not None:
            command += ["--constraint", str(constraints)]
        subprocess.run(command, cwd=ROOT, check=True)
        installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs
            if item["metadata"]["name"].lower() != PROJECT}


def write_lock(name: str, target: str, pins: dict[str, str], pip_version: str) -> Path:
    path = ROOT / "locks" / f"{name}.txt"
    header = [f"# {name}: `pip install -r locks/{name}.txt`, then the project with --no-deps "
              "(locks/sync.py does both).",
              f"# Resolved from {target!r} by `make lock` on {datetime.date.today().isoformat()} with pip "
              f"{pip_version}, CPython {platform.python_version()} on {sys.platform} {platform.machine()}.",
              "# Edit pyproject.toml's ranges, not this file; `make lock` rewrites it."]
    path.write_text("\n".join([*header, *(f"{package}=={pins[package]}" for package in sorted(pins))]) + "\n")
    return path


def main() -> None:
    made_here = set(ROOT.glob("*.egg-info"))
    try:
        resolve_all()
    finally:  # pip's metadata build leaves <project>.egg-info at the root, which would shadow the installed metadata
        for stale in set(ROOT.glob("*.egg-info")) - made_here:
            shutil.rmtree(stale)


def resolve_all() -> None:
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    largest, *others = LOCKS
    constraints = write_lock(largest, LOCKS[largest], resolve(LOCKS[largest], None), pip_version)
    for name in others:
        write_lock(name, LOCKS[name], resolve(LOCKS[name], constraints), pip_version)
    for name in LOCKS:
        print(f"locks/{name}.txt: {sum(1 for line in open(ROOT / 'locks' / f'{name}.txt') if '==' in line)} pins")


if __name__ == "__main__":
    main()
