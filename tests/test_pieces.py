"""Long documents cut into pieces tokenize exactly as the whole document does (checked cuts), for the tokenizer
designs in use: byte-level BPE with GPT-2's and Qwen2's split regex, SentencePiece-style Metaspace unigram and BPE,
WordPiece with a normalizer. Where no checked cut exists the cut is counted, never silent."""

from __future__ import annotations

import random

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from slim.harness.data.corpus import read_chapters
from slim.harness.data.pieces import PieceCutter
from tests.corpora import KJV

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _chapters() -> list[str]:
    return [chapter.text for chapter in read_chapters(str(KJV))]


def _trained(model, trainer, pre_tokenizer=None, normalizer=None, decoder=None) -> Tokenizer:
    tokenizer = Tokenizer(model)
    if pre_tokenizer is not None:
        tokenizer.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    if decoder is not None:
        tokenizer.decoder = decoder
    tokenizer.train_from_iterator(_chapters()[:300], trainer)
    return tokenizer


def _byte_level(use_regex: bool = True, split: str | None = None) -> Tokenizer:
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)]
    if split is not None:
        steps.insert(0, pre_tokenizers.Split(Regex(split), behavior="isolated"))
    return _trained(models.BPE(), trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel
                                                      .alphabet(), show_progress=False),
                    pre_tokenizers.Sequence(steps), decoder=decoders.ByteLevel())


TOKENIZERS = {
    "byte-level BPE (GPT-2 regex)": lambda: _byte_level(),
    "byte-level BPE (Qwen2 split)": lambda: _byte_level(use_regex=False, split=QWEN2_SPLIT),
    "Metaspace unigram": lambda: _trained(models.Unigram(), trainers.UnigramTrainer(
        vocab_size=500, show_progress=False, unk_token="<unk>", special_tokens=["<unk>"]),
        pre_tokenizers.Metaspace(prepend_scheme="first")),
    "Metaspace BPE (always)": lambda: _trained(models.BPE(unk_token="<unk>"), trainers.BpeTrainer(
        vocab_size=500, show_progress=False, special_tokens=["<unk>"]),
        pre_tokenizers.Metaspace(prepend_scheme="always")),
    "WordPiece, lowercased": lambda: _trained(models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer(
        vocab_size=500, show_progress=False, special_tokens=["[UNK]"]), pre_tokenizers.BertPreTokenizer(),
        normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])),
}


def _mixed_text(length: int, seed: int = 0) -> str:
    """Real sentences with the corners a cut can land in: runs of spaces and newlines, digits, non-ASCII letters,
    combining marks, emoji (byte-level pieces of one character) and punctuation runs."""
    rng = random.Random(seed)
    verses = [verse for chapter in _chapters()[:200] for verse in chapter.split("\n")]
    oddities = ["   ", "\n\n\n", " \n ", "12345678", "Ärger über Öl", "e\u0301te\u0301", "\U0001F600\U0001F680",
                "!!!???...", "\t\t", "naïve café", "日本語の文章"]
    parts: list[str] = []
    size = 0
    while size < length:
        part = rng.choice(verses) if rng.random() < 0.7 else rng.choice(oddities)
        parts.append(part + rng.choice([" ", "\n", "", "  "]))
        size += len(parts[-1])
    return "".join(parts)[:length]


def _piecewise(cutter: PieceCutter, text: str) -> list[int]:
    ids: list[int] = []
    for piece, _ in cutter.pieces(text):
        assert len(piece) <= cutter.piece_chars
        ids += cutter.tokenizer.encode(piece, add_special_tokens=False).ids
    return ids


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_pieces_tokenize_like_the_whole_document(name):
    """Every cut of a 120k-character mixed document is checked and the pieces' tokens are the whole text's."""
    tokenizer = TOKENIZERS[name]()
    text = _mixed_text(120_000)
    cutter = PieceCutter(tokenizer, piece_chars=6000, window=512)
    pieces, lasts = zip(*cutter.pieces(text))
    assert "".join(pieces) == text and len(pieces) >= 20 and lasts == (False,) * (len(pieces) - 1) + (True,)
    assert cutter.unverified == 0
    assert _piecewise(cutter, text) == tokenizer.encode(text, add_special_tokens=False).ids


def test_a_short_text_is_one_piece():
    cutter = PieceCutter(TOKENIZERS["byte-level BPE (GPT-2 regex)"](), piece_chars=6000, window=512)
    assert list(cutter.pieces("In the beginning")) == [("In the beginning", True)]
    assert list(cutter.pieces("")) == [("", True)]


def test_a_cut_with_no_checked_place_is_counted():
    """A tokenizer with no pre-tokenizer that prefixes every input (Llama-style normalizer) has no cut that keeps
    its tokens; the pieces still cover the text and each unverified cut is counted."""
    tokenizer = _trained(models.BPE(unk_token="<unk>"), trainers.BpeTrainer(
        vocab_size=500, show_progress=False, special_tokens=["<unk>"]),
        normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]))
    text = _mixed_text(30_000, seed=1)
    cutter = PieceCutter(tokenizer, piece_chars=6000, window=512)
    pieces = [piece for piece, _ in cutter.pieces(text)]
    assert "".join(pieces) == text
    assert cutter.unverified == len(pieces) - 1 > 0


def test_a_window_too_wide_for_the_piece_is_refused():
    with pytest.raises(ValueError, match="piece_chars"):
        PieceCutter(TOKENIZERS["byte-level BPE (GPT-2 regex)"](), piece_chars=1000, window=512)
