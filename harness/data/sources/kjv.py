"""`kjv`: the shipped King James Bible (data/corpus/kjv.txt.gz), one document per chapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from slim.harness.config.schema import DataConfig
from slim.harness.data.corpus import read_chapters, split_corpus
from slim.harness.data.sources import Document, Source, sources
from slim.harness.errors import UserError


def position_split(doc_id: str, position: int, heldout_every: int) -> str:
    """The corpus's historical split by chapter position (slim.harness.data.corpus.split_corpus), so the shipped
    tokenizer, teacher and demo results stay what they were."""
    if position % heldout_every == heldout_every - 1:
        return "validation"
    return "calibration" if position % heldout_every == heldout_every - 2 else "train"


def _documents(cfg: DataConfig) -> Iterator[Document]:
    for chapter in read_chapters(cfg.path):
        yield Document(f"{chapter.book}{chapter.chapter}", chapter.text)


def _files(cfg: DataConfig) -> list[Path]:
    if not Path(cfg.path).is_file():
        raise UserError(f"data.path: file not found: {cfg.path}")
    return [Path(cfg.path)]


def _train_texts(cfg: DataConfig) -> list[str]:
    return split_corpus(read_chapters(cfg.path), cfg.heldout_every).train


sources.register("kjv")(Source(
    doc="The shipped KJV verse file (`<Book><chapter>:<verse> <text>` lines), one document per chapter; split by "
        "chapter position; trains its BPE tokenizer when data.tokenizer is missing; packs in memory without "
        "prepare-data",
    documents=_documents, files=_files, split=position_split, train_texts=_train_texts))
