"""`hf_disk`: a `datasets.Dataset.save_to_disk` (or DatasetDict) directory; one document per row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from slim.harness.config.schema import DataConfig
from slim.harness.data.sources import BadDocument, Document, Source, sources
from slim.harness.data.sources.parquet import BATCH_ROWS, check_text_type, text_value
from slim.harness.errors import UserError


def _parts(cfg: DataConfig) -> list[tuple[str, object]]:
    """(id prefix, Dataset) pairs: the dataset itself, or a DatasetDict's splits in name order."""
    import datasets

    if not Path(cfg.path).is_dir():
        raise UserError(f"data.path: {cfg.path} is not a directory (data.source=hf_disk reads a "
                        "datasets save_to_disk directory)")
    try:
        loaded = datasets.load_from_disk(cfg.path)
    except Exception as error:  # datasets raises FileNotFoundError, ValueError, ... for foreign directories
        raise UserError(f"data.path: cannot load {cfg.path} with datasets.load_from_disk ({error})") from error
    if isinstance(loaded, datasets.DatasetDict):
        return [(f"{name}:", loaded[name]) for name in sorted(loaded)]
    return [("", loaded)]


def _check(cfg: DataConfig) -> None:
    for prefix, dataset in _parts(cfg):
        where = f"{cfg.path}{' split ' + prefix[:-1] if prefix else ''}"
        if cfg.text_field not in dataset.column_names:
            raise UserError(f"data.text_field: no column {cfg.text_field!r} in {where} (its columns: "
                            f"{', '.join(dataset.column_names)})")
        check_text_type(dataset.data.schema.field(cfg.text_field).type, cfg.text_field, where)


def _files(cfg: DataConfig) -> list[Path]:
    root = Path(cfg.path)
    if not root.is_dir():
        _parts(cfg)  # its one-line error
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def _documents(cfg: DataConfig) -> Iterator[Document | BadDocument]:
    for prefix, dataset in _parts(cfg):
        row = 0
        for batch in dataset.select_columns([cfg.text_field]).iter(batch_size=BATCH_ROWS):
            for value in batch[cfg.text_field]:
                yield text_value(value, f"{prefix}{row}", f"{cfg.path} {prefix}row {row}")
                row += 1


sources.register("hf_disk")(Source(
    doc="A datasets save_to_disk directory (Dataset, or DatasetDict read split by split in name order): one "
        "document per row, its text in column data.text_field; ids are [split:]row",
    documents=_documents, files=_files, check=_check, options=("text_field",)))
