"""The shipped corpus as chapters, and its deterministic train/validation/calibration split.

The corpus has one verse per line, `<Book><chapter>:<verse> <text>` (e.g. `Ge1:1 In the beginning ...`).
Chapters are the unit of the split so no chapter leaks across splits.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass

from slim.harness.errors import UserError

VERSE_LINE = re.compile(r"(?P<book>\d?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.+)")


@dataclass(frozen=True)
class Chapter:
    """One chapter: its verse texts (reference prefixes stripped) joined with newlines."""

    book: str
    chapter: int
    text: str


@dataclass
class CorpusSplit:
    """Chapter texts per split, in corpus order."""

    train: list[str]
    validation: list[str]
    calibration: list[str]


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise UserError(f"data.path: file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:  # EOFError/zlib.error: truncated/corrupt .gz
        raise UserError(f"data.path: cannot read {path} as UTF-8 text ({e})") from e


def read_chapters(path: str) -> list[Chapter]:
    """Group the verses of a `.gz` or plain-text corpus file into chapters, in file order."""
    chapters: list[Chapter] = []
    key: tuple[str, int] | None = None
    verses: list[str] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        match = VERSE_LINE.fullmatch(line)
        if match is None:
            raise UserError(
                f"data.path: {path}:{lineno}: expected '<Book><chapter>:<verse> <text>', got {line[:60]!r}"
            )
        line_key = (match["book"], int(match["chapter"]))
        if line_key != key:
            if key is not None:
                chapters.append(Chapter(key[0], key[1], "\n".join(verses)))
            key, verses = line_key, []
        verses.append(match["text"])
    if key is None:
        raise UserError(f"data.path: no verses in {path}")
    chapters.append(Chapter(key[0], key[1], "\n".join(verses)))
    return chapters


def split_corpus(chapters: list[Chapter], heldout_every: int) -> CorpusSplit:
    """Split by chapter position i: the last of every `heldout_every` goes to validation, the one before to
    calibration."""
    if not isinstance(heldout_every, int) or heldout_every < 3:
        raise UserError(f"data.heldout_every: must be an integer >= 3, got {heldout_every!r}")
    split = CorpusSplit(train=[], validation=[], calibration=[])
    for i, chapter in enumerate(chapters):
        position = i % heldout_every
        if position == heldout_every - 1:
            split.validation.append(chapter.text)
        elif position == heldout_every - 2:
            split.calibration.append(chapter.text)
        else:
            split.train.append(chapter.text)
    return split
