"""Packed next-token sequences for every split, cached beside the tokenizer that produced them.

Each split is one token stream (every text's ids, then eos) cut into disjoint windows of
seq_len + 1 tokens: inputs are a window's first seq_len tokens, labels its last seq_len.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from harness.atomic import save_safetensors_atomic
from harness.config.schema import DataConfig
from harness.data.corpus import CorpusSplit, read_chapters, split_corpus
from harness.data.tokenizer import load_or_train_tokenizer
from harness.errors import UserError

SPLITS = ("train", "validation", "calibration")
MIN_SEQ_LEN = 8


def pack_texts(texts: list[str], tokenizer: PreTrainedTokenizerFast, seq_len: int) -> torch.LongTensor:
    """Token stream of `texts` (each followed by eos) as disjoint rows of seq_len + 1; the partial tail is dropped."""
    window = seq_len + 1
    encodings = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    eos = tokenizer.eos_token_id
    stream = torch.tensor([token for ids in encodings for token in (*ids, eos)], dtype=torch.long)
    num_sequences = stream.numel() // window
    return stream[: num_sequences * window].view(num_sequences, window)  # [num_sequences, seq_len + 1]


class PackedDataset(Dataset):
    """Rows of a packed tensor as {"input_ids": row[:-1], "labels": row[1:], "index": row number}; the index
    lets an offline teacher cache (harness/training/teacher_cache.py) look up a train batch's targets."""

    def __init__(self, sequences: torch.Tensor) -> None:
        assert sequences.ndim == 2 and sequences.dtype == torch.long, (sequences.shape, sequences.dtype)
        self.sequences = sequences

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        row = self.sequences[index]
        return {"input_ids": row[:-1], "labels": row[1:], "index": index}


@dataclass
class CorpusData:
    """Everything the trainers and the calibration pass read from the corpus."""

    tokenizer: PreTrainedTokenizerFast
    train: PackedDataset
    validation: PackedDataset
    calibration: PackedDataset
    split: CorpusSplit


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sequences_sha256(dataset: PackedDataset) -> str:
    """sha256 of a packed split's tokens (as int32): corpus, split, tokenizer and seq_len in one check."""
    return hashlib.sha256(dataset.sequences.to(torch.int32).numpy().tobytes()).hexdigest()


def _cache_key(cfg: DataConfig, corpus_sha256: str) -> dict[str, str]:
    return {"seq_len": str(cfg.seq_len), "heldout_every": str(cfg.heldout_every), "corpus_sha256": corpus_sha256}


def _cache_path(cfg: DataConfig, corpus_sha256: str) -> str:
    name = f"packed-seq{cfg.seq_len}-every{cfg.heldout_every}-{corpus_sha256[:16]}.safetensors"
    return os.path.join(cfg.tokenizer, name)


def _load_cache(path: str, key: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """Packed splits stored at `path` if present, readable and built for `key`; otherwise None (rebuild)."""
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            if f.metadata() != key:
                return None
            return {name: f.get_tensor(name).long() for name in SPLITS}
    except (SafetensorError, OSError, KeyError):
        return None


def _save_cache(path: str, packed: dict[str, torch.Tensor], key: dict[str, str]) -> None:
    """Write the cache atomically, so a killed run never leaves a truncated one."""
    # int32 halves the file; token ids are far below 2**31.
    tensors = {name: tensor.to(torch.int32).contiguous() for name, tensor in packed.items()}
    save_safetensors_atomic(tensors, path, key)


def _pack_splits(split: CorpusSplit, tokenizer: PreTrainedTokenizerFast, seq_len: int) -> dict[str, torch.Tensor]:
    packed = {name: pack_texts(getattr(split, name), tokenizer, seq_len) for name in SPLITS}
    for name, sequences in packed.items():
        if sequences.shape[0] == 0:
            raise UserError(f"data.seq_len: the {name} split holds fewer than seq_len + 1 = {seq_len + 1} tokens")
    return packed


def build_corpus_data(cfg: DataConfig) -> CorpusData:
    """Read and split the corpus, load or train the tokenizer, and pack every split (cached on disk)."""
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < MIN_SEQ_LEN:
        raise UserError(f"data.seq_len: must be an integer >= {MIN_SEQ_LEN}, got {cfg.seq_len!r}")
    split = split_corpus(read_chapters(cfg.path), cfg.heldout_every)
    tokenizer = load_or_train_tokenizer(cfg, split.train)
    key = _cache_key(cfg, file_sha256(cfg.path))
    cache_path = _cache_path(cfg, key["corpus_sha256"])
    packed = _load_cache(cache_path, key)
    if packed is None:
        packed = _pack_splits(split, tokenizer, cfg.seq_len)
        _save_cache(cache_path, packed, key)
    return CorpusData(
        tokenizer=tokenizer,
        train=PackedDataset(packed["train"]),
        validation=PackedDataset(packed["validation"]),
        calibration=PackedDataset(packed["calibration"]),
        split=split,
    )
