"""Long documents cut into bounded pieces before tokenizing, at cuts that leave the token stream unchanged.

A tokenizer's memory grows with its input (a Hugging Face `Encoding` keeps ids, offsets and token strings: about
130 bytes per byte of text), so `slim prepare-data` never hands a tokenizer process more than PIECE_CHARS of one
document. Each cut is chosen near its nominal place and checked there: the WINDOW characters on both sides,
tokenized in one go, must give exactly the tokens of the two halves tokenized apart. Every pre-tokenizing tokenizer
(byte-level BPE with a split regex, Metaspace, WordPiece, ...) passes at a pre-token boundary, and its tokens never
look further than the pre-token they are in, so the pieces' tokens concatenate to the whole document's tokens.

Where no checked cut exists among the CANDIDATES token starts nearest the nominal place (a pre-token longer than
the window, a tokenizer that adds a prefix to every input), the cut is made at the nominal place anyway and counted
(`PieceCutter.unverified`): the stream may then differ from whole-document tokenization at that cut, and
`slim prepare-data` says how many such cuts it made.
"""

from __future__ import annotations

from collections.abc import Iterator

from tokenizers import Tokenizer

PIECE_CHARS = 1 << 18  # characters per piece at most: ~35 MB of tokenizer state
WINDOW = 2048  # characters each side of a cut that are tokenized to check it
CANDIDATES = 16  # token starts tried per cut, nearest the nominal place first


class PieceCutter:
    """Cuts texts longer than `piece_chars` into checked pieces with `tokenizer` (the one the workers run)."""

    def __init__(self, tokenizer: Tokenizer, piece_chars: int = PIECE_CHARS, window: int = WINDOW) -> None:
        if piece_chars <= 2 * window:
            raise ValueError(f"piece_chars ({piece_chars}) must exceed twice the window ({window})")
        self.tokenizer = tokenizer
        self.piece_chars = piece_chars
        self.window = window
        self.unverified = 0  # cuts made without a checked place

    def pieces(self, text: str) -> Iterator[tuple[str, bool]]:
        """(piece, whether it is the last) for consecutive pieces of `text` of at most `piece_chars` characters
        (one piece when it is short); a generator, so only one piece is held beside the text."""
        start = 0
        while len(text) - start > self.piece_chars:
            cut = self._cut(text, start + self.piece_chars - self.window)
            yield text[start:cut], False
            start = cut
        yield text[start:], True

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _cut(self, text: str, nominal: int) -> int:
        """A checked cut near `nominal` (within the window around it), or `nominal` counted as unverified."""
        low = nominal - self.window
        around = text[low:nominal + self.window]
        encoding = self.tokenizer.encode(around, add_special_tokens=False)
        # a token's end where the next one starts (at or after it: byte-level offsets trim a leading space)
        ends = [end for (_, end), (start, _) in zip(encoding.offsets, encoding.offsets[1:])
                if end <= start and self.window // 2 <= end <= len(around) - self.window // 2]
        for end in sorted(ends, key=lambda offset: abs(offset - self.window))[:CANDIDATES]:
            if self._ids(around[:end]) + self._ids(around[end:]) == encoding.ids:
                return low + end
        self.unverified += 1
        return nominal
