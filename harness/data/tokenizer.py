"""The data tokenizer: any Hugging Face tokenizer directory (`data.tokenizer`, e.g. the teacher's checkpoint), or,
for a source that ships its corpus, a byte-level BPE trained on its train split once and reloaded by every later run.

Byte-level BPE with no normalizer and no prefix space is lossless: decode(encode(text)) == text for
any string, newlines included, so perplexities and generated text map back to the corpus exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from slim.harness.config.schema import DataConfig
from slim.harness.errors import UserError

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


def load_tokenizer(tokenizer_dir: str) -> PreTrainedTokenizerFast:
    """The tokenizer saved in `tokenizer_dir` (any Hugging Face tokenizer directory, a model checkpoint's too); one-line
    UserError unless it loads and has an eos token. Its vocabulary is its own: consumers compare it with the model's."""
    if not os.path.isdir(tokenizer_dir) or not os.listdir(tokenizer_dir):
        raise UserError(f"data.tokenizer: no tokenizer in {tokenizer_dir}; point it at a Hugging Face tokenizer "
                        "directory (the teacher's checkpoint directory works)")
    try:
        # never remote code: a portable checkpoint's auto_map must not make transformers ask on stdin
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    except Exception as e:  # any failure of the HF loader means the directory is not a usable tokenizer
        raise UserError(f"data.tokenizer: cannot load a tokenizer from {tokenizer_dir} "
                        f"({type(e).__name__}: {e})") from e
    if tokenizer.eos_token_id is None:
        raise UserError(f"data.tokenizer: tokenizer in {tokenizer_dir} has no eos token")
    return tokenizer


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 hex digest of the tokenizer's vocabulary (token -> id): equal vocabularies tokenize alike."""
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()


def needs_training(cfg: DataConfig) -> bool:
    """Whether `data.tokenizer` is a missing or empty directory (a source that trains one then does)."""
    if os.path.exists(cfg.tokenizer) and not os.path.isdir(cfg.tokenizer):
        raise UserError(f"data.tokenizer: {cfg.tokenizer} exists and is not a directory")
    return not os.path.isdir(cfg.tokenizer) or not os.listdir(cfg.tokenizer)


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


def load_or_train_tokenizer(cfg: DataConfig, train_texts: Callable[[], list[str]] | None) -> PreTrainedTokenizerFast:
    """Load the tokenizer in `cfg.tokenizer`; when that directory is missing or empty, train a `cfg.vocab_size` BPE
    on `train_texts()` and save it there first (sources that ship their own corpus; None: refuse).

    The returned tokenizer is always the one read back from disk, so every process of a distributed run uses
    identical files.
    """
    if needs_training(cfg):
        if train_texts is None:
            load_tokenizer(cfg.tokenizer)  # its one-line error: no tokenizer there
        _save_atomically(train_tokenizer(train_texts(), cfg.vocab_size), cfg.tokenizer)
    return load_tokenizer(cfg.tokenizer)
