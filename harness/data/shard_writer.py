"""The writers of `slim prepare-data`: one shard at a time per split, to a temp file hashed as tokens arrive and
renamed into place when it closes; a split's recorded shards are kept, or rewritten when damaged (and must then
come out identical), and new ones are appended."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slim.harness.atomic import atomic_path
from slim.harness.data.shards import SAMPLE_KEY, sampled_sha256, shard_name
from slim.harness.errors import UserError


class ShardWriter:
    """One shard being written: a temp file beside its final path, hashed as tokens arrive, renamed on close."""

    def __init__(self, path: Path, number: int, first_document: int) -> None:
        self.number = number
        self.first_document = first_document
        self.documents = 0
        self.tokens = 0
        self._sha = hashlib.sha256()
        self._stack = ExitStack()
        self._file = self._stack.enter_context(open(self._stack.enter_context(atomic_path(path)), "wb"))

    def append(self, tokens: np.ndarray, ends_document: bool) -> None:
        self._file.write(tokens.data)
        self._sha.update(tokens.data)
        self.tokens += len(tokens)
        self.documents += ends_document

    def record(self, file: str) -> dict:
        return {"file": file, "first_document": self.first_document, "documents": self.documents,
                "tokens": self.tokens, "sha256": self._sha.hexdigest()}

    def close(self) -> None:
        self._stack.close()

    def abort(self) -> None:
        """Remove the temp file; the shard's previous file (if any) stays."""
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


@dataclass
class SplitWriter:
    """The shards of one split: recorded ones kept (or rewritten when damaged), new ones appended."""

    output: Path
    split: str
    records: list[dict]
    damaged: set[int]
    shard_tokens: int
    complete: bool
    on_close: Callable[[], object]  # persists the index
    written: int = 0
    current: ShardWriter | None = None
    _starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._starts = [record["first_document"] for record in self.records]
        last = self.records[-1] if self.records else None
        self.recorded_end = last["first_document"] + last["documents"] if last else 0
        self.stop_at = max((self._end(number) for number in self.damaged), default=0)

    def _end(self, number: int) -> int:
        return self.records[number]["first_document"] + self.records[number]["documents"]

    def _recorded(self, ordinal: int) -> int:
        return bisect.bisect_right(self._starts, ordinal) - 1

    def wanted(self, ordinal: int) -> bool:
        """Whether document `ordinal` of this split must be tokenized: it belongs to a damaged or a new shard."""
        if ordinal >= self.recorded_end:
            return not self.complete
        return self._recorded(ordinal) in self.damaged

    def done(self, ordinal: int) -> bool:
        """Whether nothing from document `ordinal` on is needed (a complete index whose damage lies before it)."""
        return self.complete and ordinal >= self.stop_at

    def add(self, ordinal: int, tokens: np.ndarray, ends_document: bool) -> None:
        """Append document `ordinal`'s tokens, or a piece of them (a shard only closes at a document's end)."""
        if self.current is None:
            number = self._recorded(ordinal) if ordinal < self.recorded_end else len(self.records)
            self.current = ShardWriter(self.output / shard_name(self.split, number), number, ordinal)
        self.current.append(tokens, ends_document)
        if not ends_document:
            return
        number = self.current.number
        if (number < len(self.records) and ordinal + 1 == self._end(number)) or (
                number == len(self.records) and self.current.tokens >= self.shard_tokens):
            self._close()

    def _close(self) -> None:
        shard, self.current = self.current, None
        record = shard.record(shard_name(self.split, shard.number))
        rewritten = shard.number < len(self.records)
        if rewritten:
            recorded = {key: value for key, value in self.records[shard.number].items() if key != SAMPLE_KEY}
            if record != recorded:
                shard.abort()
                raise UserError(f"data.path: {self.output / record['file']} re-tokenized to other tokens than its "
                                "index records: the source changed under the same fingerprint; prepare into a new "
                                "data.output")
            self.damaged.discard(shard.number)
        shard.close()
        record[SAMPLE_KEY] = sampled_sha256(self.output / record["file"])
        if rewritten:
            self.records[shard.number] = record
        else:
            self.records.append(record)
            self._starts.append(record["first_document"])
        self.written += 1
        self.on_close()

    def finish(self) -> None:
        """Close the last new shard at the end of the stream."""
        if self.current is not None:
            if self.current.number < len(self.records):
                self.current.abort()
                raise UserError(f"data.path: the source ended inside recorded shard {self.current.number} of the "
                                f"{self.split} split: it changed under the same fingerprint; prepare into a new "
                                "data.output")
            self._close()

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None
