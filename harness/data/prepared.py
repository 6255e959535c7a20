"""Prepared shards opened for training and evaluation: a split's windows as a torch Dataset over memory maps,
refused unless they were prepared from this source with this tokenizer (the format itself is shards.py's)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from slim.harness.config.schema import DataConfig
from slim.harness.data.shards import (
    TokenStream,
    complete_index,
    expected_identity,
    identity_difference,
    shard_problem,
)
from slim.harness.data.sources import SPLITS, Source
from slim.harness.errors import UserError


class PreparedDataset(Dataset):
    """Disjoint windows of seq_len + 1 tokens of a prepared split, as {"input_ids", "labels", "index"} like
    slim.harness.data.packing.PackedDataset (the partial tail is dropped)."""

    def __init__(self, stream: TokenStream, seq_len: int, digest: str, vocab_ids: int) -> None:
        self.stream = stream
        self.window = seq_len + 1
        self.digest = digest
        self.vocab_ids = vocab_ids  # ids the tokenizer has: a larger one in a shard is damage, never a token

    def __len__(self) -> int:
        return len(self.stream) // self.window

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = torch.from_numpy(self.stream.read(index * self.window, (index + 1) * self.window))
        if int(row.max()) >= self.vocab_ids:
            raise UserError(f"data.output: window {index} holds token id {int(row.max())}, beyond the tokenizer's "
                            f"{self.vocab_ids} ids (a damaged shard); rerun `slim prepare-data` with the same "
                            "overrides to check and rewrite the shards")
        return {"input_ids": row[:-1], "labels": row[1:], "index": index}

    def fingerprint(self) -> str:
        """The split's shard checksums and the window length: equal fingerprints, equal windows."""
        return self.digest


def open_split(output: Path, index: dict, split: str, seq_len: int, vocab_ids: int) -> PreparedDataset:
    """The split's windows, every shard's size and sampled blocks checked (a checksum of every byte is
    prepare-data's job: a rerun verifies all shards and rewrites damaged ones)."""
    records = index["shards"][split]
    itemsize = np.dtype(index["identity"]["dtype"]).itemsize
    for record in records:
        problem = shard_problem(output, record, itemsize, checksum=False)
        if problem:
            raise UserError(f"data.output: {problem}; rerun `slim prepare-data` with the same overrides to rewrite it")
    digest = hashlib.sha256(json.dumps([[r["sha256"] for r in records], seq_len]).encode()).hexdigest()
    stream = TokenStream([str(output / r["file"]) for r in records], [r["tokens"] for r in records],
                         index["identity"]["dtype"])
    return PreparedDataset(stream, seq_len, digest, vocab_ids)


def load_prepared(cfg: DataConfig, source: Source, tokenizer: PreTrainedTokenizerBase) -> dict[str, PreparedDataset]:
    """Every split of the shards in `data.output` as windows of seq_len + 1, refused unless they were prepared from
    this source and options with this tokenizer and every shard has its recorded size."""
    index = complete_index(cfg)
    difference = identity_difference(index["identity"], expected_identity(cfg, source, tokenizer))
    if difference:
        raise UserError(f"data.output: {cfg.output} holds shards prepared from other data or with another tokenizer "
                        f"({difference}); run `slim prepare-data` with these overrides into another data.output")
    vocab_ids = max(tokenizer.get_vocab().values()) + 1
    return {split: open_split(Path(cfg.output), index, split, cfg.seq_len, vocab_ids) for split in SPLITS}
