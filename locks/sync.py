"""Make the running virtual environment hold exactly one lock file, plus this project (editable).

    .venv/bin/python locks/sync.py locks/demo.txt

Installs the lock's pins (pip first, so the rest installs with the locked pip), then the project with `--no-deps`
and `--no-build-isolation` (its build backend is the locked setuptools), uninstalls whatever else the environment
holds (an older lock's leftovers), runs `pip check`, and copies the lock to `<venv>/slim-lock.txt`, which
`slim.harness.provenance` reads back to stamp results with the lock's digest. Refuses to run outside a venv.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from lock import PROJECT  # locks/lock.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_LOCK = "slim-lock.txt"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """{normalized name: version} of a lock file's `name==version` lines."""
    found = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[normalize(name)] = version
    return found


def pip(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdout=subprocess.PIPE, text=True).stdout


def main() -> None:
    if sys.prefix == sys.base_prefix:
        raise SystemExit("locks/sync.py: run it with a virtual environment's python, not the system's")
    lock = Path(sys.argv[1]).resolve()
    locked = pins(lock)
    pip("install", "--quiet", f"pip=={locked['pip']}")
    pip("install", "--quiet", "--requirement", str(lock))
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", "--editable", str(ROOT))
    installed = {normalize(item["name"]) for item in json.loads(pip("list", "--format=json"))}
    extra = sorted(installed - set(locked) - {PROJECT})
    if extra:
        print(f"locks/sync.py: removing {len(extra)} package(s) not in {lock.name}: {', '.join(extra)}")
        pip("uninstall", "--quiet", "--yes", *extra)
    pip("check")
    shutil.copyfile(lock, Path(sys.prefix) / INSTALLED_LOCK)
    print(f"locks/sync.py: {sys.prefix} holds {lock.name} ({len(locked)} pins) and the project")


if __name__ == "__main__":
    main()
