"""Packed next-token sequences for every split: memory-mapped from the shards `slim prepare-data` wrote to
`data.output`, or, for a source that may pack in memory (the shipped corpus), tokenized here and cached beside the
tokenizer that produced them.

Each split is one token stream (every text's ids, then eos) cut into disjoint windows of
seq_len + 1 tokens: inputs are a window's first seq_len tokens, labels its last seq_len.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from slim.harness.atomic import save_safetensors_atomic
from slim.harness.config.schema import DataConfig
from slim.harness.data.corpus import CorpusSplit
from slim.harness.data.documents import split_texts
from slim.harness.data.prepared import PreparedDataset, load_prepared
from slim.harness.data.shards import complete_index, index_digest
from slim.harness.data.sources import SPLITS, Source, get_source
from slim.harness.data.tokenizer import load_or_train_tokenizer, load_tokenizer, tokenizer_sha256
from slim.harness.errors import UserError

MIN_SEQ_LEN = 8
NOT_PREPARED = ("data.output: empty, and data.source={source} is read from prepared shards only; run "
                "`slim prepare-data` with the same overrides plus data.output=DIR, then pass that data.output")


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

    def fingerprint(self) -> str:
        """sha256 of the packed tokens (as int32): corpus, split, tokenizer and seq_len in one check."""
        return hashlib.sha256(self.sequences.to(torch.int32).numpy().tobytes()).hexdigest()


WindowDataset = PackedDataset | PreparedDataset


@dataclass
class CorpusData:
    """Everything the trainers and the calibration pass read from the corpus; `split` holds the texts when they
    were packed in memory (None for prepared shards)."""

    tokenizer: PreTrainedTokenizerFast
    train: WindowDataset
    validation: WindowDataset
    calibration: WindowDataset
    split: CorpusSplit | None = None


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sequences_sha256(dataset: WindowDataset) -> str:
    """What identifies a split's windows: the packed tokens' sha256 in memory, the shard checksums and seq_len when
    prepared (cheap either way)."""
    return dataset.fingerprint()


def window_rows(dataset: WindowDataset, start: int, stop: int) -> torch.Tensor:
    """Windows [start, stop) as one [n, seq_len + 1] tensor."""
    if isinstance(dataset, PackedDataset):
        return dataset.sequences[start:stop]
    window = dataset.window
    return torch.from_numpy(dataset.stream.read(start * window, stop * window)).view(stop - start, window)


def files_sha256(paths: list) -> str:
    """sha256 of one file's bytes, or of the per-file digests of several."""
    if len(paths) == 1:
        return file_sha256(str(paths[0]))
    return hashlib.sha256("".join(file_sha256(str(path)) for path in paths).encode()).hexdigest()


def corpus_sha256(cfg: DataConfig) -> str:
    """What the corpus and its split are, cheaply: the prepared index's digest (identity and shard checksums), or
    the source files' bytes for a source packed in memory."""
    if cfg.output:
        return index_digest(complete_index(cfg))
    return files_sha256(get_source(cfg).files(cfg))


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
    _check_windows({name: PackedDataset(sequences) for name, sequences in packed.items()}, seq_len)
    return packed


def check_seq_len(cfg: DataConfig) -> None:
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < MIN_SEQ_LEN:
        raise UserError(f"data.seq_len: must be an integer >= {MIN_SEQ_LEN}, got {cfg.seq_len!r}")


def _check_windows(datasets: dict[str, WindowDataset], seq_len: int) -> None:
    for name, dataset in datasets.items():
        if len(dataset) == 0:
            raise UserError(f"data.seq_len: the {name} split holds fewer than seq_len + 1 = {seq_len + 1} tokens")


def _in_memory(cfg: DataConfig, source: Source) -> CorpusData:
    """Split and tokenize the source here (training its tokenizer when missing), packed splits cached on disk."""
    split = split_texts(cfg, source)
    tokenizer = load_or_train_tokenizer(cfg, lambda: split.train)
    key = _cache_key(cfg, files_sha256(source.files(cfg)))
    cache_path = _cache_path(cfg, key["corpus_sha256"])
    packed = _load_cache(cache_path, key)
    if packed is None:
        packed = _pack_splits(split, tokenizer, cfg.seq_len)
        _save_cache(cache_path, packed, key)
    return CorpusData(tokenizer=tokenizer, split=split, **{name: PackedDataset(packed[name]) for name in SPLITS})


def check_data(cfg: DataConfig) -> None:
    """What build_corpus_data needs, checked without tokenizing anything (for commands that do other work first):
    the source and its options, and prepared shards that match this config, or a source that packs in memory."""
    check_seq_len(cfg)
    source = get_source(cfg)
    if cfg.output:
        load_prepared(cfg, source, load_tokenizer(cfg.tokenizer))
    elif source.train_texts is None:
        raise UserError(NOT_PREPARED.format(source=cfg.source))
    else:
        source.files(cfg)


def build_corpus_data(cfg: DataConfig) -> CorpusData:
    """The tokenizer and every split's windows: from the prepared shards in `data.output` when set, else packed in
    memory for a source that may (others are refused, pointing at `slim prepare-data`)."""
    check_seq_len(cfg)
    source = get_source(cfg)
    if cfg.output:
        tokenizer = load_tokenizer(cfg.tokenizer)
        datasets = load_prepared(cfg, source, tokenizer)
        _check_windows(datasets, cfg.seq_len)
        return CorpusData(tokenizer=tokenizer, **datasets)
    if source.train_texts is None:
        raise UserError(NOT_PREPARED.format(source=cfg.source))
    return _in_memory(cfg, source)


def validation_windows(cfg: DataConfig) -> Callable[[PreTrainedTokenizerBase, int], WindowDataset]:
    """The validation split as windows of `length` input tokens for a model evaluated with its own tokenizer:
    `windows(tokenizer, length)`. Prepared shards are refused unless that tokenizer made them; a source packed in
    memory is tokenized by it. The corpus is read, or the index checked, here, before any model is loaded."""
    source = get_source(cfg)
    if cfg.output:
        index = complete_index(cfg)

        def prepared(tokenizer: PreTrainedTokenizerBase, length: int) -> WindowDataset:
            if tokenizer_sha256(tokenizer) != index["identity"]["tokenizer_fingerprint"]:
                raise UserError(f"data.output: {cfg.output} was prepared with another tokenizer than the evaluated "
                                "model's; prepare the data with the model's tokenizer (data.tokenizer=<model dir>)")
            return load_prepared(dataclasses.replace(cfg, seq_len=length), source, tokenizer)["validation"]

        return prepared
    if source.train_texts is None:
        raise UserError(NOT_PREPARED.format(source=cfg.source))
    texts = split_texts(cfg, source).validation
    return lambda tokenizer, length: PackedDataset(pack_texts(texts, tokenizer, length))
