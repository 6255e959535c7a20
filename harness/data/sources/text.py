"""`text`: a .txt / .txt.gz file or a directory of them; one document per file or per blank-line block."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from slim.harness.config.schema import DataConfig
from slim.harness.data.sources import (
    BadDocument,
    Document,
    Source,
    decode,
    input_files,
    is_blank,
    read_lines,
    read_whole,
    relative_name,
    sources,
)
from slim.harness.errors import UserError

SUFFIXES = (".txt", ".txt.gz")
MODES = ("file", "block")
LINE_END_RETURNS = re.compile(r"\r+(?=\n|\Z)")  # what read_lines strips from each line's end


def _check(cfg: DataConfig) -> None:
    if cfg.text_documents not in MODES:
        raise UserError(f"data.text_documents: must be one of {', '.join(MODES)}, got {cfg.text_documents!r}")


def _files(cfg: DataConfig) -> list[Path]:
    return input_files(cfg, SUFFIXES, "text files")


def _document(name: str, doc_id: str, lines: list[tuple[int, memoryview]], file: Path) -> Document | BadDocument:
    """The lines joined by newlines, or a BadDocument naming the first line that is not UTF-8."""
    texts = []
    for number, raw in lines:
        text = decode(raw, f"{file}:{number}", doc_id)
        if isinstance(text, BadDocument):
            return text
        texts.append(text)
    return Document(doc_id, "\n".join(texts))


def _whole_file(name: str, file: Path) -> Document | BadDocument:
    """The file as one document, as `_document` would join its lines (line endings and the carriage returns before
    them dropped), read in one piece: a book-sized file is held as bytes, then as text, never as lists of lines."""
    data = read_whole(file)
    try:
        text = str(memoryview(data)[:len(data) - data.endswith(b"\n")], "utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        return BadDocument(name, f"{file}:{line}", f"not UTF-8 ({error.reason} at byte {error.start - line_start})")
    del data
    return Document(name, LINE_END_RETURNS.sub("", text) if "\r" in text else text)


def _blocks(lines: Iterator[tuple[int, memoryview]]) -> Iterator[list[tuple[int, memoryview]]]:
    """Runs of consecutive non-blank lines."""
    block: list[tuple[int, memoryview]] = []
    for number, raw in lines:
        if not is_blank(raw):
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
            yield _whole_file(name, file)
            continue
        for block in _blocks(read_lines(file)):
            yield _document(name, f"{name}:{block[0][0]}", block, file)


sources.register("text")(Source(
    doc="A .txt/.txt.gz file or directory of them: one document per file (lines joined by newlines), or per "
        "blank-line block with data.text_documents=block; ids are relative path (+ first line)",
    documents=_documents, files=_files, check=_check, options=("text_documents",)))
