"""One `slim grid` per output folder: an exclusive `flock` on `<output dir>/grid.lock`, held for the whole run.

The holder writes its pid into the file so a second grid can say who holds it. The kernel drops the lock
when the holder exits, however it exits (kill -9 included), so a killed grid never leaves a stale lock; the
file itself stays and is reused. Readers (`slim report`) do not take it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slim.harness.errors import UserError

LOCK_NAME = "grid.lock"


@contextmanager
def grid_lock(output_dir: Path) -> Iterator[None]:
    """Hold the output folder's grid lock for the block; a folder another process holds is refused in one line."""
    lock_path = output_dir / LOCK_NAME
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"grid output folder {output_dir}: cannot write there ({err.strerror})") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"grid output folder {output_dir} is in use by another `slim grid` (pid {holder}); wait "
                            f"for it to finish or stop it, then rerun") from None
        except OSError as err:  # e.g. a network filesystem without lock support
            raise UserError(f"grid output folder {output_dir}: cannot lock {lock_path} ({err.strerror})") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)
