"""Atomic file writes: a killed run leaves the previous file (or none), never a truncated one."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from slim.harness.errors import UserError

if TYPE_CHECKING:
    import torch

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: str | Path, error: BaseException) -> UserError | None:
    """A one-line error for a write of `path` that failed on a full filesystem (or quota), else None. safetensors
    reports a full disk as its own SafetensorError, recognized by the OS message."""
    full = (isinstance(error, OSError) and error.errno in FULL_ERRNOS) or "No space left on device" in str(error)
    if not full:
        return None
    directory = next(parent for parent in Path(path).absolute().parents if parent.exists())
    return UserError(f"{path}: the filesystem is full ({shutil.disk_usage(directory).free / 2**20:.1f} MiB free in "
                     f"{directory}); the partial file was removed; free space or write elsewhere")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` to write to; renamed over `path` when the block ends, removed if it raises.

    The temp file is created like a plain `open(path, "w")` would create it, with mode 0666 minus the umask
    (0644 under umask 022), not tempfile.mkstemp's owner-only 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield Path(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as error:
        os.unlink(tmp_path)
        full = disk_full(path, error)
        if full is not None:
            raise full from error
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`path.write_text(text)`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def give_plain_modes(root: Path) -> None:
    """Every file at or under `root` gets the mode a plain `open(path, "w")` would give it, 0666 minus the umask:
    safetensors writes its files owner-only (0600), which other users of a shared checkpoint could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root] if root.is_file() else [path for path in root.rglob("*") if path.is_file()]:
        path.chmod(0o666 & ~umask)


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """`safetensors.torch.save_file`, atomically, with the file mode of a plain write."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        give_plain_modes(tmp)
    return Path(path)


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree; nothing when absent."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def swap_in(tmp: Path, path: Path, aside: Path) -> None:
    """Rename `tmp` over `path`. A directory on either side cannot be renamed over, so the old `path` is moved to
    `aside` first and removed after: a kill in between leaves it whole at `aside`, never half of it."""
    if path.exists() and (tmp.is_dir() or path.is_dir()):
        remove_path(aside)
        os.replace(path, aside)
        os.replace(tmp, path)
        remove_path(aside)
    else:
        os.replace(tmp, path)
