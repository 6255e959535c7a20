"""Tokenizer worker processes of `slim prepare-data`: documents in, one token array per batch out.

Light on purpose (tokenizers and numpy only): each worker is a fresh spawned interpreter, never a fork of a
process whose tokenizer or torch threads already ran.
"""

from __future__ import annotations

import os

import numpy as np
from tokenizers import Tokenizer

_state: dict = {}


def init_worker(tokenizer_json: str, eos_token_id: int, dtype: str) -> None:
    """Pool initializer: one sequential tokenizer per process (the processes are the parallelism)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _state.update(tokenizer=Tokenizer.from_str(tokenizer_json), eos=eos_token_id, dtype=dtype)


def encode_batch(texts: list[str], ends: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, lengths): every text's ids, followed by eos where it ends its document (the others are pieces of a
    long one), concatenated, and each text's length. Same ids as the Hugging Face tokenizer's
    `tokenizer(texts, add_special_tokens=False)` (it calls this backend)."""
    encodings = _state["tokenizer"].encode_batch(texts, add_special_tokens=False)
    eos = _state["eos"]
    flat: list[int] = []
    for encoding, last in zip(encodings, ends, strict=True):
        flat.extend(encoding.ids)
        if last:
            flat.append(eos)
    lengths = np.fromiter((len(encoding.ids) + last for encoding, last in zip(encodings, ends)), dtype=np.int64,
                          count=len(encodings))
    return np.asarray(flat, dtype=_state["dtype"]), lengths
