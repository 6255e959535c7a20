"""`jsonl`: a .jsonl / .jsonl.gz file or a directory of them; one document per line, text in `data.text_field`."""

from __future__ import annotations

import json
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
    relative_name,
    sources,
)
from slim.harness.errors import UserError

SUFFIXES = (".jsonl", ".jsonl.gz")


def _files(cfg: DataConfig) -> list[Path]:
    return input_files(cfg, SUFFIXES, "JSONL files")


def _record(line: str, where: str, doc_id: str, field: str) -> Document | BadDocument:
    try:
        record = json.loads(line)
    except ValueError as error:
        return BadDocument(doc_id, where, f"not JSON ({error})")
    if not isinstance(record, dict):
        return BadDocument(doc_id, where, f"a JSON {type(record).__name__}, not an object")
    if field not in record:
        raise UserError(f"data.text_field: no field {field!r} in {where} (its fields: {', '.join(sorted(record))})")
    text = record[field]
    if not isinstance(text, str):
        return BadDocument(doc_id, where, f"field {field!r} is {type(text).__name__}, not a string")
    return Document(doc_id, text)


def _documents(cfg: DataConfig) -> Iterator[Document | BadDocument]:
    for file in _files(cfg):
        name = relative_name(cfg, file)
        for number, raw in read_lines(file):
            if is_blank(raw):
                continue
            where, doc_id = f"{file}:{number}", f"{name}:{number}"
            line = decode(raw, where, doc_id)
            del raw  # a long line is held once: as bytes until decoded, as text while parsed, then as its document
            record = line if isinstance(line, BadDocument) else _record(line, where, doc_id, cfg.text_field)
            del line
            yield record


sources.register("jsonl")(Source(
    doc="A .jsonl/.jsonl.gz file or directory of them: one document per non-blank line, its text in "
        "data.text_field; ids are relative path:line",
    documents=_documents, files=_files, options=("text_field",)))
