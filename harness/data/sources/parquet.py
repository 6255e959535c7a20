"""`parquet`: a .parquet file or a directory of them; one document per row, text in column `data.text_field`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from slim.harness.config.schema import DataConfig
from slim.harness.data.sources import BadDocument, Document, Source, input_files, relative_name, sources
from slim.harness.errors import UserError

SUFFIXES = (".parquet",)
BATCH_ROWS = 1024


def _files(cfg: DataConfig) -> list[Path]:
    return input_files(cfg, SUFFIXES, "Parquet files")


def text_value(value: object, doc_id: str, where: str) -> Document | BadDocument:
    """A column value as a document: str as is, bytes decoded as UTF-8, anything else (null) bad."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as error:
            return BadDocument(doc_id, where, f"not UTF-8 ({error.reason} at byte {error.start})")
    if not isinstance(value, str):
        return BadDocument(doc_id, where, f"{type(value).__name__}, not text")
    return Document(doc_id, value)


def check_text_type(type_: object, field: str, where: object) -> None:
    """Refuse a column that does not hold text (pyarrow string or binary types)."""
    import pyarrow as pa

    if not (pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_binary(type_)
            or pa.types.is_large_binary(type_)):
        raise UserError(f"data.text_field: column {field!r} of {where} holds {type_}, not text")


def _check(cfg: DataConfig) -> None:
    """Every file has the text column, read from its footer (no rows)."""
    import pyarrow.parquet as pq

    for file in _files(cfg):
        try:
            schema = pq.read_schema(file)
        except Exception as error:  # pyarrow raises several types for a file that is not Parquet
            raise UserError(f"data.path: cannot read {file} as Parquet ({error})") from error
        if cfg.text_field not in schema.names:
            raise UserError(f"data.text_field: no column {cfg.text_field!r} in {file} (its columns: "
                            f"{', '.join(schema.names)})")
        check_text_type(schema.field(cfg.text_field).type, cfg.text_field, file)


def _documents(cfg: DataConfig) -> Iterator[Document | BadDocument]:
    import pyarrow.parquet as pq

    for file in _files(cfg):
        name, row = relative_name(cfg, file), 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS, columns=[cfg.text_field]):
            for value in batch.column(0).to_pylist():
                yield text_value(value, f"{name}:{row}", f"{file} row {row}")
                row += 1


sources.register("parquet")(Source(
    doc="A .parquet file or directory of them: one document per row, its text in column data.text_field; ids are "
        "relative path:row",
    documents=_documents, files=_files, check=_check, options=("text_field",)))
