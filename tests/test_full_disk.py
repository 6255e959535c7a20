"""A full disk: every command that writes more than a few kB refuses in one line before its work when the
filesystem has less room than it will write, and a write that fails anyway removes its temporary and names the
path. The real check runs on a 3 MB tmpfs that holds a filler file leaving 64 KiB free (mounting needs root:
elsewhere it is skipped and the error translation is still checked)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from safetensors import SafetensorError

from slim.harness.atomic import disk_full, write_text_atomic
from slim.harness.cli.main import main as slim
from slim.harness.errors import UserError
from tests.corpora import documents, write_jsonl

TEACHER = "assets/tiny-teacher"
FREE_BYTES = 64 << 10
FILLER = "filler.bin"  # the test's own file: the only thing the tmpfs may hold afterwards


@pytest.fixture(scope="module")
def nearly_full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 MB tmpfs with FREE_BYTES left, unmounted afterwards."""
    mount = tmp_path_factory.mktemp("tmpfs")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")
    try:
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        (mount / FILLER).write_bytes(b"\0" * (free - FREE_BYTES))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _left_on(mount: Path) -> list[str]:
    return sorted(path.relative_to(mount).as_posix() for path in mount.rglob("*"))


COMMANDS = {
    "prepare-data": lambda mount, tmp: ["prepare-data", "data.source=jsonl",
                                        f"data.path={write_jsonl(documents() * 4, tmp / 'corpus.jsonl')}",
                                        f"data.tokenizer={TEACHER}", f"data.output={mount / 'shards'}"],
    "calibrate": lambda mount, tmp: ["calibrate", f"compress.teacher={TEACHER}",
                                     f"calibration.output={mount / 'stats.safetensors'}"],
    "compress": lambda mount, tmp: ["compress", f"compress.teacher={TEACHER}", "compress.experts.num_experts=8",
                                    f"compress.output={mount / 'student'}"],
    "distill": lambda mount, tmp: ["distill", f"distill.teacher={TEACHER}", f"distill.student={TEACHER}",
                                   f"distill.output={tmp / 'distilled'}", f"run_dir={mount / 'run'}"],
    "cache-teacher": lambda mount, tmp: ["cache-teacher", f"distill.teacher={TEACHER}",
                                         f"distill.teacher_cache={mount / 'cache'}"],
}


@pytest.mark.e2e
@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_refuses_a_full_disk_in_one_line_before_work(command, nearly_full, tmp_path, capsys):
    """With 64 KiB free, each command exits 2 with one line naming its field and the free space, and leaves
    nothing on the filesystem."""
    assert slim([*COMMANDS[command](nearly_full, tmp_path), "tracking.wandb=false"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "MiB free, the output needs about" in error, error
    assert _left_on(nearly_full) == [FILLER]


def test_a_write_that_fills_the_disk_removes_its_temporary_and_names_the_path(nearly_full):
    with pytest.raises(UserError, match=rf"^{nearly_full / 'big.txt'}: the filesystem is full \(0\.\d MiB free in "):
        write_text_atomic(nearly_full / "big.txt", "x" * (4 * FREE_BYTES))
    assert _left_on(nearly_full) == [FILLER]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                   OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
                                   SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                                   "StorageFull, message: \"No space left on device\" })")])
def test_full_disk_errors_become_one_line(error, tmp_path):
    """ENOSPC, a quota, and safetensors' own wrapping of ENOSPC are one line; other errors stay themselves."""
    assert str(disk_full(tmp_path / "x", error)).startswith(f"{tmp_path / 'x'}: the filesystem is full (")
    assert disk_full(tmp_path / "x", OSError(errno.EACCES, "Permission denied")) is None
