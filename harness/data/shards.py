"""Prepared token shards (`slim prepare-data`): the index format, its checks, and a split read as one memory-mapped
token stream (torch-free: prepare-data's process never imports torch for it; prepared.py makes the Dataset).

`<data.output>/index.json` records what the shards are (`identity`: source and its fingerprint, the source's
options, the split rule's `heldout_every`, tokenizer fingerprint, eos id, token dtype; nothing depends on seq_len),
the document count per split, and per split the shards in stream order: file, first document, documents, tokens,
sha256. `<split>/shard-NNNNN.bin` holds raw uint16 or uint32 tokens, every document followed by eos. A split is the
concatenation of its shards; its windows of seq_len + 1 tokens are disjoint and may span shard boundaries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slim.harness.config.schema import DataConfig
from slim.harness.data.sources import Source, files_fingerprint
from slim.harness.data.tokenizer import tokenizer_sha256
from slim.harness.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
OPEN_SHARDS = 64  # memory maps kept open per reader (each holds a file descriptor)


SAMPLE_KEY = "sample_sha256"  # a shard record's digest of its sampled blocks (sampled_sha256)
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 4096


def token_dtype(vocab_ids: int) -> str:
    """uint16 when every id fits, else uint32."""
    return "uint16" if vocab_ids <= 1 << 16 else "uint32"


def shard_name(split: str, number: int) -> str:
    return f"{split}/shard-{number:05d}.bin"


def read_index(output: str | Path) -> dict | None:
    """The index in `output`, or None when there is none; an unreadable one is a one-line UserError."""
    path = Path(output) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"data.output: {path} is not a prepare-data index ({error})") from error
    if not isinstance(index, dict) or not {"identity", "shards"} <= set(index):
        raise UserError(f"data.output: {path} is not a prepare-data index (no identity or shards)")
    return index


def identity_difference(recorded: dict, expected: dict) -> str:
    """'' when equal, else the first differing field with both values."""
    def short(value: object) -> str:
        return value[:12] if isinstance(value, str) and len(value) == 64 else str(value)  # sha256 digests

    for key in sorted(set(recorded) | set(expected)):
        if recorded.get(key) != expected.get(key):
            return f"{key} {short(recorded.get(key))} vs {short(expected.get(key))} here"
    return ""


def sampled_sha256(path: Path) -> str:
    """sha256 of SAMPLE_BLOCKS blocks of SAMPLE_BYTES spread evenly over the file, its first and last included: 64
    KiB read per shard, so every open can catch a shard replaced by another of the same size (another tokenizer's,
    another corpus's) without hashing every byte."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in range(SAMPLE_BLOCKS):
            handle.seek(max(0, size - SAMPLE_BYTES) * block // (SAMPLE_BLOCKS - 1))
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def shard_problem(output: Path, record: dict, itemsize: int, checksum: bool) -> str:
    """Why the shard of `record` cannot be read ('' when it can): missing, wrong size, sampled blocks that do not
    hash to the recorded SAMPLE_KEY (indexes written before it lack it), or (with `checksum`) bytes that do not
    hash to the recorded sha256."""
    path = output / record["file"]
    if not path.is_file():
        return f"{path} is missing"
    expected = record["tokens"] * itemsize
    if path.stat().st_size != expected:
        return f"{path} holds {path.stat().st_size} bytes, the index says {expected}"
    if SAMPLE_KEY in record and sampled_sha256(path) != record[SAMPLE_KEY]:
        return f"{path} does not hold the tokens its index records (its sampled blocks differ)"
    if checksum:
        with open(path, "rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != record["sha256"]:
                return f"{path} does not match its recorded sha256"
    return ""


@dataclass
class TokenStream:
    """A split's shards as one token sequence, read through memory maps opened lazily (at most OPEN_SHARDS at a
    time); picklable, so DataLoader workers each open their own maps."""

    paths: list[str]
    lengths: list[int]
    dtype: str
    _starts: np.ndarray = field(init=False, repr=False)
    _maps: dict[int, np.memmap] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._starts = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "lengths": self.lengths, "dtype": self.dtype}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _shard(self, number: int) -> np.memmap:
        if number not in self._maps:
            if len(self._maps) >= OPEN_SHARDS:
                del self._maps[next(iter(self._maps))]
            self._maps[number] = np.memmap(self.paths[number], dtype=self.dtype, mode="r",
                                           shape=(self.lengths[number],))
        return self._maps[number]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64, across shard boundaries."""
        parts = []
        number = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            offset = start - int(self._starts[number])
            take = min(stop - start, self.lengths[number] - offset)
            parts.append(self._shard(number)[offset:offset + take])
            start += take
            number += 1
        return np.concatenate(parts).astype(np.int64)


def index_digest(index: dict) -> str:
    """sha256 of what a prepared directory holds (identity and every shard checksum)."""
    shards = {split: [r["sha256"] for r in records] for split, records in index["shards"].items()}
    return hashlib.sha256(json.dumps([index["identity"], shards], sort_keys=True).encode()).hexdigest()


def expected_identity(cfg: DataConfig, source: Source, tokenizer: "PreTrainedTokenizerBase") -> dict:
    """What shards prepared under `cfg` with `tokenizer` record as their identity (nothing depends on seq_len)."""
    return {"format": FORMAT_VERSION, "source": cfg.source,
            "source_fingerprint": files_fingerprint(cfg, source.files(cfg)),
            "options": {name: getattr(cfg, name) for name in source.options}, "heldout_every": cfg.heldout_every,
            "skip_bad_documents": cfg.skip_bad_documents, "tokenizer_fingerprint": tokenizer_sha256(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "dtype": token_dtype(max(tokenizer.get_vocab().values()) + 1)}


def complete_index(cfg: DataConfig) -> dict:
    """The finished index in `data.output`; one line telling to run `slim prepare-data` when there is none."""
    index = read_index(cfg.output)
    if index is None:
        raise UserError(f"data.output: no prepared shards in {cfg.output}; run `slim prepare-data` with the same "
                        "overrides first")
    if not index.get("complete"):
        raise UserError(f"data.output: {cfg.output} is incomplete (prepare-data was interrupted); rerun "
                        "`slim prepare-data` with the same overrides")
    return index
