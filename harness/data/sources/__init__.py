"""Data sources: where documents come from, one registered entry per format (one file each in this package).

A source yields documents in a stable order, each with a stable id (the file's path relative to `data.path` plus a
line or row number) and its text, or a `BadDocument` the engine refuses or skips (`data.skip_bad_documents`). The
engine (harness/data/documents.py, harness/data/prepare.py) never names a source: each entry brings its own option
check, input files (for the fingerprint) and, where it differs from the default, its split rule.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from slim.harness.config.load import check_choices
from slim.harness.config.schema import DataConfig
from slim.harness.errors import UserError
from slim.harness.registry import Registry

SPLITS = ("train", "validation", "calibration")
FINGERPRINT_BYTES = 1 << 16  # hashed at each end of every input file
CARRIAGE_RETURN = ord("\r")
BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*")


@dataclass(frozen=True)
class Document:
    """One document: `id` is stable across reruns (never depends on shard or process counts)."""

    id: str
    text: str


@dataclass(frozen=True)
class BadDocument:
    """A document that cannot be read (e.g. not UTF-8); `where` names the file and line or row."""

    id: str
    where: str
    reason: str


def hash_split(doc_id: str, position: int, heldout_every: int) -> str:
    """sha256(id) mod heldout_every: heldout_every - 1 -> validation, heldout_every - 2 -> calibration, else train.
    Depends on the id alone, so reruns, shard counts and process counts never move a document."""
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") % heldout_every
    if bucket == heldout_every - 1:
        return "validation"
    return "calibration" if bucket == heldout_every - 2 else "train"


def _no_check(cfg: DataConfig) -> None:
    """No options beyond data.path."""


@dataclass(frozen=True)
class Source:
    """A registered source. `documents(cfg)` streams Document | BadDocument in a stable order; `files(cfg)` lists
    the input files (refusing a missing or empty `data.path`); `check(cfg)` refuses bad options before any work;
    `options` are the DataConfig fields it reads (recorded with prepared shards and compared when they are read);
    `split(id, position, heldout_every)` assigns a document to a split. `train_texts(cfg)`, when set, gives the
    texts a BPE tokenizer is trained on when `data.tokenizer` is missing, and lets the source pack in memory
    without `slim prepare-data`."""

    doc: str
    documents: Callable[[DataConfig], Iterator[Document | BadDocument]]
    files: Callable[[DataConfig], list[Path]]
    check: Callable[[DataConfig], None] = _no_check
    options: tuple[str, ...] = ()
    split: Callable[[str, int, int], str] = hash_split
    train_texts: Callable[[DataConfig], list[str]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.doc)  # what `slim methods` lists


sources: Registry[Source] = Registry.of_group("slim.data_sources")


def get_source(cfg: DataConfig) -> Source:
    """The source `data.source` names, its options checked (one-line UserError naming the field): the schema's
    ranges too, for a DataConfig built in code rather than loaded."""
    check_choices(cfg, "data.")
    source = sources.get(cfg.source, "data.source")
    source.check(cfg)
    return source


def input_files(cfg: DataConfig, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """`data.path` itself when it is a file, else every file under it whose name ends in one of `suffixes`, in
    sorted relative-path order; a missing path or a directory without such files is refused."""
    root = Path(cfg.path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"data.path: {root} not found (data.source={cfg.source} reads {what})")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes)),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise UserError(f"data.path: no {what} ({', '.join(suffixes)}) under {root}")
    return files


def relative_name(cfg: DataConfig, file: Path) -> str:
    """`file` relative to `data.path` (its own name when `data.path` is that file): the stem of document ids."""
    root = Path(cfg.path)
    return file.name if root.is_file() else file.relative_to(root).as_posix()


def read_lines(file: Path) -> Iterator[tuple[int, memoryview]]:
    """(1-based line number, the line without its line ending) of a plain or .gz file; a damaged .gz is one line.
    A line is a view of the bytes read, held by nothing here once yielded: a document can be a whole book on one
    line, and its bytes then exist once, until the consumer decodes them and lets go."""
    with _reading(file) as handle:
        for number, line in enumerate(handle, start=1):
            end = len(line) - line.endswith(b"\n")
            while end and line[end - 1] == CARRIAGE_RETURN:
                end -= 1
            held = [line]
            del line  # while suspended at the yield this frame must not hold the line: only the consumer does
            yield number, memoryview(held.pop())[:end]


def read_whole(file: Path) -> bytes:
    """All bytes of a plain or .gz file; a damaged .gz is one line."""
    with _reading(file) as handle:
        return handle.read()


@contextmanager
def _reading(file: Path) -> Iterator[BinaryIO]:
    opener = gzip.open if file.name.endswith(".gz") else open
    try:
        with opener(file, "rb") as handle:
            yield handle
    except (OSError, EOFError, zlib.error) as error:  # EOFError / zlib.error: a truncated or corrupt .gz
        raise UserError(f"data.path: cannot read {file} ({error})") from error


def is_blank(raw: memoryview) -> bool:
    """Whether a line holds only ASCII whitespace (as bytes.strip sees it), checked without copying it."""
    return BLANK.fullmatch(raw) is not None


def decode(raw: memoryview, where: str, doc_id: str) -> str | BadDocument:
    """`raw` as UTF-8, or a BadDocument naming `where`."""
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as error:
        return BadDocument(doc_id, where, f"not UTF-8 ({error.reason} at byte {error.start})")


def files_fingerprint(cfg: DataConfig, files: list[Path]) -> str:
    """sha256 over each input file's relative name, size and first and last FINGERPRINT_BYTES: cheap enough to
    check whenever prepared shards are read, and changed by any append, truncation or edit near either end. Kept
    per process for files whose size and mtime did not change, since one command checks it several times."""
    stats = tuple((relative_name(cfg, file), str(file), file.stat().st_size, file.stat().st_mtime_ns) for file in files)
    return _fingerprint(stats)


@functools.lru_cache(maxsize=16)
def _fingerprint(stats: tuple[tuple[str, str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, path, size, _ in stats:
        digest.update(json.dumps([name, size]).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            if size > FINGERPRINT_BYTES:
                handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                digest.update(handle.read())
    return digest.hexdigest()
