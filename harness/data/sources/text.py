"""`text`: a .txt / .txt.gz file or a directory of them; one document per file or per blank-line block."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from slim.harness.config.schema import DataConfig
from slim.harness.data.sources import (
    BadDocument,
    Document,
    Source,
    decode,
    input_files,
    read_lines,
    relative_name,
    sources,
)
from slim.harness.errors import UserError

SUFFIXES = (".txt", ".txt.gz")
MODES = ("file", "block")


def _check(cfg: DataConfig) -> None:
    if cfg.text_documents not in MODES:
        raise UserError(f"data.text_documents: must be one of {', '.join(MODES)}, got {cfg.text_documents!r}")


def _files(cfg: DataConfig) -> list[Path]:
    return input_files(cfg, SUFFIXES, "text files")


def _document(name: str, doc_id: str, lines: list[tuple[int, bytes]], file: Path) -> Document | BadDocument:
    """The lines joined by newlines, or a BadDocument naming the first line that is not UTF-8."""
    texts = []
    for number, raw in lines:
        text = decode(raw, f"{file}:{number}", doc_id)
        if isinstance(text, BadDocument):
            return text
        texts.append(text)
    return Document(doc_id, "\n".join(texts))


def _blocks(lines: Iterator[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
    """Runs of consecutive non-blank lines."""
    block: list[tuple[int, bytes]] = []
    for number, raw in lines:
        if raw.strip():
            block.append((number, raw))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _documents(cfg: DataConfig) -> Iterator[Document | BadDocument]:
    for file in _files(cfg):
        name = relative_name(cfg, file)
        if cfg.text_documents == "file":
            yield _document(name, name, list(read_lines(file)), file)
            continue
        for block in _blocks(read_lines(file)):
            yield _document(name, f"{name}:{block[0][0]}", block, file)


sources.register("text")(Source(
    doc="A .txt/.txt.gz file or directory of them: one document per file (lines joined by newlines), or per "
        "blank-line block with data.text_documents=block; ids are relative path (+ first line)",
    documents=_documents, files=_files, check=_check, options=("text_documents",)))
