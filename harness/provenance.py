"""What made a result: the harness's results version and the software that computed it.

RESULTS_VERSION: bump when a change to the harness alters what an unchanged config computes (a new default, a
fixed bug in training, compression or evaluation). Grid cell keys hash it, so cells stored before the bump show
as stale and are run again instead of being reused.

`software()` is stamped on every summary JSON, grid row and benchmark result: python, the libraries whose version
changes numbers, and the digest of the lock the environment was installed from (`locks/sync.py` leaves a copy of
it in the venv). `mixed_software_note` names what differs between the cells of one table.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

RESULTS_VERSION = 2

# Distributions whose version is recorded with every result.
RECORDED_DISTRIBUTIONS = ("torch", "transformers", "lightning", "lm-eval", "flash-linear-attention", "triton")
INSTALLED_LOCK = "slim-lock.txt"  # written into the venv by locks/sync.py
UNRECORDED = "unrecorded"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def lock_digest(prefix: Path | None = None) -> str | None:
    """First 16 hex digits of the sha256 of the lock installed into the environment at `prefix` (default: this
    one), suffixed `+modified` when an installed version no longer matches one of its pins; None without a lock
    (a package installed into an environment of the user's own)."""
    lock = Path(prefix or sys.prefix) / INSTALLED_LOCK
    if not lock.is_file():
        return None
    text = lock.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    pins = dict(line.split("==", 1) for line in text.splitlines() if line and not line.startswith("#"))
    installed = {_normalize(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    drifted = any(installed.get(_normalize(name)) != version for name, version in pins.items())
    return digest + ("+modified" if drifted else "")


@functools.cache
def software() -> dict[str, str | None]:
    """{python, each RECORDED_DISTRIBUTIONS version (None: not installed), lock digest} of this process."""
    return {"python": platform.python_version(), **{name: _version(name) for name in RECORDED_DISTRIBUTIONS},
            "lock": lock_digest()}


def stamped(record: Mapping) -> dict:
    """`record` (a summary or benchmark result) with this process's `software()` under the key "software"."""
    return {**record, "software": software()}


def unstamped(record: Mapping) -> dict:
    """A summary read back from disk without its "software" stamp, as the run that wrote it returned it (a reused
    stage's record then equals the one a fresh run returns; the stamp is on the enclosing summary)."""
    return {key: value for key, value in record.items() if key != "software"}


def mixed_software_note(records: Iterable[Mapping[str, str | None] | None], what: str) -> str | None:
    """One line naming each recorded package whose version differs between `records` (one per result; None for a
    result made before versions were recorded), with how many results had each version; None when all agree."""
    records = [dict(record) if record is not None else None for record in records]
    keys = sorted({key for record in records if record for key in record}, key=_recorded_order)
    differing = []
    for key in keys:
        counts = Counter(UNRECORDED if record is None else str(record.get(key)) for record in records)
        if len(counts) > 1:
            differing.append(f"{key} " + ", ".join(f"{value} ({count})" for value, count in sorted(counts.items())))
    if not differing:
        return None
    return f"note: {what} were made under different software: " + "; ".join(differing)


def _recorded_order(key: str) -> tuple[int, str]:
    order = ("python", *RECORDED_DISTRIBUTIONS, "lock")
    return (order.index(key), key) if key in order else (len(order), key)
