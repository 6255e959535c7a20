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
    read_lines,
    relative_name,
    sources,
)
from slim.harness.errors import UserError

SUFFIXES = (".jsonl", ".jsonl.gz")


def _files(cfg: DataConfig) -> list[Path]:
    return input_files(cfg, SUFFIXES, "JSONL files")


def _record(raw: bytes, file: Path, number: int, doc_id: str, field: str) -> Document | BadDocument:
    where = f"{file}:{number}"
    line = decode(raw, where, doc_id)
    if isinstance(line, BadDocument):
        return line
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
            if raw.strip():
                yield _record(raw, file, number, f"{name}:{number}", cfg.text_field)


sources.register("jsonl")(Source(
    doc="A .jsonl/.jsonl.gz file or directory of them: one document per non-blank line, its text in "
        "data.text_field; ids are relative path:line",
    documents=_documents, files=_files, options=("text_field",)))
