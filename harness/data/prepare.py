"""`slim prepare-data`: stream a source's documents through `data.num_proc` tokenizer processes into token shards.

Every split is written as its own stream of shards (`<data.output>/<split>/shard-NNNNN.bin`, see harness/data/shards.py
for the index). A shard closes at the first document end at or past `data.shard_tokens` tokens, and the index records
its document range, so a rerun knows which documents every recorded shard holds without tokenizing them: it checks
every recorded shard (size and sha256), re-tokenizes only the documents of a missing or damaged one, and continues
after the last recorded shard. Each shard is written to a temp file as its tokens arrive, hashed on the way, and
renamed into place when it closes; the index is rewritten atomically after every shard. Memory stays bounded by the
batches in flight (a few per process), whatever the corpus size, and a document longer than a piece reaches the
tokenizer processes in checked pieces (harness/data/pieces.py), whatever its size.

Before anything is written, a scan reads every document once (no tokenizing): a bad document, an empty source or an
empty split is refused in one line, and the per-split counts it finds size the progress bar.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from slim.harness.atomic import write_text_atomic
from slim.harness.config.schema import DataConfig, SlimConfig
from slim.harness.data.documents import DocumentStream
from slim.harness.data.pieces import PieceCutter
from slim.harness.data.shard_writer import SplitWriter
from slim.harness.data.shards import INDEX_FILE, expected_identity, identity_difference, read_index, shard_problem
from slim.harness.data.sources import SPLITS, Source, get_source
from slim.harness.data.tokenize import encode_batch, init_worker
from slim.harness.data.tokenizer import load_or_train_tokenizer
from slim.harness.errors import UserError
from slim.harness.outputs import check_output_dir, mark

logger = logging.getLogger(__name__)

BATCH_DOCUMENTS = 256  # documents per tokenizer task
BATCH_BYTES = 1 << 20  # or fewer when their text reaches this size
TEXT_BYTES_PER_TOKEN = 3  # a low bound for BPE on natural text (English runs near 4), so estimates err high
GZIP_TRAILER = 18  # the smallest .gz file: 10-byte header, 8-byte trailer
TASKS_PER_PROCESS = 4  # tasks in flight per tokenizer process: enough to keep it busy, few enough to bound memory


@dataclass
class PrepareSummary:
    """What `slim prepare-data` prints."""

    output: str
    source: str
    dtype: str
    documents: dict[str, int]
    tokens: dict[str, int]
    shards: int
    shards_written: int
    skipped_documents: int  # bad documents skipped (data.skip_bad_documents)
    num_proc: int
    wall_seconds: float
    tokens_per_second: float  # tokens this run tokenized / its wall time
    tokens_per_second_per_process: float
    unverified_cuts: int  # cuts of long documents where the token stream may differ (harness/data/pieces.py)


def check_prepare_config(cfg: DataConfig) -> None:
    if not cfg.output:
        raise UserError("data.output: empty; set the directory the shards go to, e.g. data.output=runs/shards")


def scan(cfg: DataConfig, source: Source) -> tuple[dict[str, int], int]:
    """(documents per split, bad documents skipped), reading every document once; refuses bad documents (unless
    skipped), an empty source and an empty split."""
    counts = dict.fromkeys(SPLITS, 0)
    stream = DocumentStream(cfg, source)
    for split, _ in tqdm(stream, desc="prepare-data: scan", unit="doc", leave=False):
        counts[split] += 1
    total = sum(counts.values())
    if total == 0:
        skipped = f" ({stream.skipped} bad documents skipped)" if stream.skipped else ""
        raise UserError(f"data.path: no documents in {cfg.path} (data.source={cfg.source}){skipped}")
    for split, count in counts.items():
        if count == 0:
            raise UserError(f"data.path: the {split} split got none of the {total} documents (about 1 in "
                            f"data.heldout_every={cfg.heldout_every} goes to validation and to calibration each); "
                            "add documents or lower data.heldout_every")
    return counts, stream.skipped


@dataclass
class Batch:
    """Documents of one split waiting to be sent to a tokenizer process."""

    ordinals: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ends: list[bool] = field(default_factory=list)  # whether each text ends its document (a long one comes in pieces)
    size: int = 0

    def add(self, ordinal: int, text: str, ends: bool) -> bool:
        """Add a document or a piece of one; whether the batch is now full."""
        self.ordinals.append(ordinal)
        self.texts.append(text)
        self.ends.append(ends)
        self.size += len(text)
        return len(self.texts) >= BATCH_DOCUMENTS or self.size >= BATCH_BYTES


def _tokenizer_for(cfg: DataConfig, source: Source) -> PreTrainedTokenizerBase:
    train_texts = None if source.train_texts is None else (lambda: source.train_texts(cfg))
    tokenizer = load_or_train_tokenizer(cfg, train_texts)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"data.tokenizer: {cfg.tokenizer} has no fast tokenizer (tokenizer.json); prepare-data "
                        "tokenizes with the `tokenizers` backend")
    return tokenizer


def _text_bytes(file: Path) -> int:
    """The bytes of text in an input file: a .gz file's trailer records its uncompressed size (modulo 4 GiB)."""
    size = file.stat().st_size
    if not file.name.endswith(".gz") or size < GZIP_TRAILER:
        return size
    with open(file, "rb") as handle:
        handle.seek(-4, 2)
        return max(size, int.from_bytes(handle.read(4), "little"))


def shard_bytes_estimate(cfg: DataConfig, source: Source, dtype: str) -> int:
    """About the bytes of shards prepare-data writes: the input's text at TEXT_BYTES_PER_TOKEN per token."""
    text = sum(_text_bytes(file) for file in source.files(cfg))
    return text // TEXT_BYTES_PER_TOKEN * np.dtype(dtype).itemsize


def _start_index(cfg: DataConfig, source: Source, identity: dict) -> dict:
    """The index already in `data.output` when it was prepared the same way, else a new one from a scan. Refuses
    an output of other data or another tokenizer, and one the harness did not write, before anything is written."""
    output = Path(cfg.output)
    index = read_index(output)
    if index is not None:
        difference = identity_difference(index["identity"], identity)
        if not difference and index.get("shard_tokens") != cfg.shard_tokens:
            difference = f"shard_tokens {index.get('shard_tokens')} vs {cfg.shard_tokens} here"
        if difference:
            raise UserError(f"data.output: {output} holds shards prepared from other data, with another tokenizer or "
                            f"other settings ({difference}); pick another data.output or delete it")
        return index
    check_output_dir(output, "data.output", shard_bytes_estimate(cfg, source, identity["dtype"]))
    documents, skipped = scan(cfg, source)
    return {"identity": identity, "shard_tokens": cfg.shard_tokens, "documents": documents,
            "skipped_documents": skipped, "complete": False, "shards": {split: [] for split in SPLITS}}


def _damaged(output: Path, index: dict) -> dict[str, set[int]]:
    """Recorded shards, per split, that are missing or fail their size or sha256 check."""
    itemsize = np.dtype(index["identity"]["dtype"]).itemsize
    return {split: {number for number, record in enumerate(records)
                    if shard_problem(output, record, itemsize, checksum=True)}
            for split, records in index["shards"].items()}


def _remove_stale_temps(output: Path) -> None:
    """Temp files a killed run left in its split folders (slim.harness.atomic names them `.<name>.<pid>-<hex>.tmp`)."""
    for split in SPLITS:
        for temp in (output / split).glob(".shard-*.tmp"):
            temp.unlink()


def prepare_data(cfg: SlimConfig) -> PrepareSummary:
    """Write (or finish, or repair) the token shards of `data.source` under `data.output`."""
    data = cfg.data
    check_prepare_config(data)
    source = get_source(data)
    tokenizer = _tokenizer_for(data, source)
    identity = expected_identity(data, source, tokenizer)
    index = _start_index(data, source, identity)
    output = Path(data.output)
    output.mkdir(parents=True, exist_ok=True)
    mark(output)
    _remove_stale_temps(output)

    def write_index() -> None:
        write_text_atomic(output / INDEX_FILE, json.dumps(index, indent=1))

    write_index()
    damaged = _damaged(output, index)
    writers = {split: SplitWriter(output, split, index["shards"][split], damaged[split], data.shard_tokens,
                                  index["complete"], write_index) for split in SPLITS}
    start = time.perf_counter()
    tokenized = unverified = 0
    if not index["complete"] or any(damaged.values()):
        tokenized, unverified = _write(data, source, tokenizer, index, writers)
        index["complete"] = True
        write_index()
    if unverified:
        logger.warning("prepare-data: %d cuts of long documents had no place where the tokens provably match "
                    "whole-document tokenization (see harness/data/pieces.py)", unverified)
    wall = time.perf_counter() - start
    return PrepareSummary(
        output=str(output), source=data.source, dtype=identity["dtype"], documents=index["documents"],
        tokens={split: sum(r["tokens"] for r in records) for split, records in index["shards"].items()},
        shards=sum(len(records) for records in index["shards"].values()),
        shards_written=sum(writer.written for writer in writers.values()),
        skipped_documents=index["skipped_documents"], num_proc=data.num_proc, wall_seconds=round(wall, 2),
        tokens_per_second=round(tokenized / max(wall, 1e-9), 1),
        tokens_per_second_per_process=round(tokenized / max(wall, 1e-9) / data.num_proc, 1),
        unverified_cuts=unverified)


def _write(cfg: DataConfig, source: Source, tokenizer: PreTrainedTokenizerBase, index: dict,
           writers: dict[str, SplitWriter]) -> tuple[int, int]:
    """Stream the documents, tokenize the wanted ones in `data.num_proc` processes (tasks taken back in order, at
    most TASKS_PER_PROCESS per process in flight; a long document in checked pieces) and hand them to their split's
    writer; returns the tokens written and the unverified cuts."""
    ordinals = dict.fromkeys(SPLITS, 0)
    pending = {split: Batch() for split in SPLITS}
    in_flight: deque = deque()
    tokenized = 0
    total = sum(index["documents"].values())
    context = multiprocessing.get_context("spawn")
    initargs = (tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, index["identity"]["dtype"])
    cutter = PieceCutter(Tokenizer.from_str(initargs[0]))
    with context.Pool(cfg.num_proc, initializer=init_worker, initargs=initargs) as pool, \
            tqdm(total=total, desc="prepare-data", unit="doc", smoothing=0.1) as bar:
        started = time.perf_counter()

        def take_back() -> None:
            nonlocal tokenized
            split, batch_ordinals, batch_ends, result = in_flight.popleft()
            tokens, lengths = result.get()
            ends = np.cumsum(lengths)
            for ordinal, begin, end, last in zip(batch_ordinals, ends - lengths, ends, batch_ends):
                writers[split].add(ordinal, tokens[begin:end], last)
            tokenized += len(tokens)
            bar.set_postfix_str(f"{tokenized / (time.perf_counter() - started):,.0f} tok/s", refresh=False)

        def submit(split: str) -> None:
            batch, pending[split] = pending[split], Batch()
            in_flight.append((split, batch.ordinals, batch.ends,
                              pool.apply_async(encode_batch, (batch.texts, batch.ends))))
            while len(in_flight) > TASKS_PER_PROCESS * cfg.num_proc:
                take_back()

        try:
            for split, document in DocumentStream(cfg, source):
                ordinal = ordinals[split]
                ordinals[split] += 1
                bar.update()
                if writers[split].wanted(ordinal):
                    for piece, last in cutter.pieces(document.text):
                        if pending[split].add(ordinal, piece, last):
                            submit(split)
                if all(writers[name].done(ordinals[name]) for name in SPLITS):
                    break
            for split in SPLITS:
                if pending[split].texts:
                    submit(split)
            while in_flight:
                take_back()
            for writer in writers.values():
                writer.finish()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
    return tokenized, cutter.unverified
