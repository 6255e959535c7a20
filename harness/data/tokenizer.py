"""Byte-level BPE tokenizer trained on the train split, saved once and reloaded by every later run.

Byte-level BPE with no normalizer and no prefix space is lossless: decode(encode(text)) == text for
any string, newlines included, so perplexities and generated text map back to the corpus exactly.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from harness.config.schema import DataConfig
from harness.errors import UserError

SPECIAL_TOKEN = "<|endoftext|>"
# 256 byte symbols plus the special token.
MIN_VOCAB_SIZE = 257


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with `vocab_size` entries; `<|endoftext|>` is eos, bos, pad and unk."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"data.vocab_size: must be >= {MIN_VOCAB_SIZE} (256 bytes + {SPECIAL_TOKEN}), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if backend.get_vocab_size() != vocab_size:
        raise UserError(
            f"data.vocab_size: the train split only supports {backend.get_vocab_size()} tokens, asked for {vocab_size}"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=SPECIAL_TOKEN,
        bos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(tokenizer_dir: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """The tokenizer saved in `tokenizer_dir`; one-line UserError unless it loads, has eos and `vocab_size` tokens."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except Exception as e:  # any failure of the HF loader means the directory is not a usable tokenizer
        raise UserError(f"data.tokenizer: cannot load a tokenizer from {tokenizer_dir} ({type(e).__name__}: {e})") from e
    if tokenizer.eos_token_id is None:
        raise UserError(f"data.tokenizer: tokenizer in {tokenizer_dir} has no eos token")
    if len(tokenizer) != vocab_size:
        raise UserError(
            f"data.tokenizer: tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens but data.vocab_size is "
            f"{vocab_size}; delete the directory or point data.tokenizer elsewhere to retrain"
        )
    return tokenizer


def _save_atomically(tokenizer: PreTrainedTokenizerFast, tokenizer_dir: str) -> None:
    """Save into a temp dir beside the target, then rename it into place; a concurrent winner is kept."""
    parent = os.path.dirname(os.path.abspath(tokenizer_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(tokenizer_dir)}.tmp-", dir=parent)
    try:
        tokenizer.save_pretrained(tmp_dir)
        os.replace(tmp_dir, tokenizer_dir)
    except OSError:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not os.path.isdir(tokenizer_dir) or not os.listdir(tokenizer_dir):
            raise


def load_or_train_tokenizer(cfg: DataConfig, train_texts: list[str]) -> PreTrainedTokenizerFast:
    """Load the tokenizer in `cfg.tokenizer`, or train it on `train_texts` and save it there first.

    A missing or empty directory means "train"; a non-empty one must hold a loadable tokenizer of
    `cfg.vocab_size` tokens. The returned tokenizer is always the one read back from disk, so every
    process of a distributed run uses identical files.
    """
    if os.path.exists(cfg.tokenizer) and not os.path.isdir(cfg.tokenizer):
        raise UserError(f"data.tokenizer: {cfg.tokenizer} exists and is not a directory")
    if not os.path.isdir(cfg.tokenizer) or not os.listdir(cfg.tokenizer):
        _save_atomically(train_tokenizer(train_texts, cfg.vocab_size), cfg.tokenizer)
    return load_tokenizer(cfg.tokenizer, cfg.vocab_size)
