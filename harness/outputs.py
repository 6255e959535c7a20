"""Output locations, checked before any compute: never replace what the harness did not write, never find out
after the work that a location is a file, read-only or full.

Every model directory the harness writes carries a marker file (`MARKER`); only an absent, empty or marked
directory may be replaced by a new output.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from slim.harness.errors import UserError
from slim.harness.models.weight_files import weight_paths

MARKER = ".slim-output"


def mark(directory: Path) -> None:
    """Record that the harness wrote `directory`, so a rerun may replace it."""
    (directory / MARKER).write_text("written by slim; a rerun may replace this directory\n")


def replaceable(directory: Path) -> bool:
    """Whether `directory` is absent, empty or harness-made: the only kinds an output may replace."""
    return not directory.exists() or (directory.is_dir() and (not any(directory.iterdir())
                                                               or (directory / MARKER).is_file()))


def _existing_ancestor(path: Path, field: str, target: Path) -> Path:
    """`path` or its nearest existing parent, which must be a directory for `target` to be written."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise UserError(f"{field}: {candidate} is a file, so {target} cannot be created there")
            return candidate
    raise AssertionError(f"no existing ancestor of {path}")  # the filesystem root always exists


def check_room(directory: str | Path, field: str, need_bytes: int = 0, target: str | Path | None = None) -> None:
    """Refuse unless files can be created in `directory` (or the nearest parent that exists) and its filesystem
    has `need_bytes` free, for writing `target` (default: `directory`). A real probe file, not permission bits:
    a read-only mount and ACLs count too."""
    directory = _existing_ancestor(Path(directory).absolute(), field, Path(target or directory))
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".slim-probe-"):
            pass
    except OSError as error:
        raise UserError(f"{field}: cannot write in {directory} ({error.strerror})") from error
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise UserError(f"{field}: {directory} has {free / 2**20:.0f} MiB free, the output needs about "
                        f"{need_bytes / 2**20:.0f} MiB")


def check_output_dir(path: str | Path, field: str, need_bytes: int = 0) -> None:
    """A model directory the harness will (re)place: absent, empty or harness-made, in a writable parent with
    room for `need_bytes` (the new directory is written beside it before the swap)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{field}: {path} is a file, not a directory")
    if not replaceable(path):
        raise UserError(f"{field}: {path} holds files the harness did not write (no {MARKER}); pick a new or empty "
                        "directory, or move them away yourself")
    check_room(path.parent, field, need_bytes, target=path)


def check_work_dir(path: str | Path, field: str, need_bytes: int = 0) -> None:
    """A directory the harness writes files into (a run_dir, a report folder): a writable directory or absent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{field}: {path} is a file, not a directory")
    check_room(path, field, need_bytes)


def check_output_file(path: str | Path, field: str, need_bytes: int = 0) -> None:
    """A file the harness writes atomically (a temp file beside it, then a rename): not a directory, in a
    writable parent."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{field}: {path} is a directory, expected a file path")
    check_room(path.parent, field, need_bytes, target=path)


def weights_bytes(model_dir: str | Path) -> int:
    """Bytes of the weight files in `model_dir` (0 without any): the rough size of a model written from it."""
    return sum(file.stat().st_size for file in weight_paths(Path(model_dir)) if file.is_file())
