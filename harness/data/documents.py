"""A source's documents with their split, bad ones refused or counted: the one document stream that both the
in-memory packing and `slim prepare-data` read."""

from __future__ import annotations

from collections.abc import Iterator

from slim.harness.config.schema import DataConfig
from slim.harness.data.corpus import CorpusSplit
from slim.harness.data.sources import BadDocument, Document, Source
from slim.harness.errors import UserError


class DocumentStream:
    """Iterating yields (split name, Document) in the source's order; a bad document is a one-line UserError naming
    where it is, or with `data.skip_bad_documents` skipped and counted in `skipped`."""

    def __init__(self, cfg: DataConfig, source: Source) -> None:
        self.cfg = cfg
        self.source = source
        self.skipped = 0

    def __iter__(self) -> Iterator[tuple[str, Document]]:
        self.skipped = 0
        for position, item in enumerate(self.source.documents(self.cfg)):
            if isinstance(item, BadDocument):
                if not self.cfg.skip_bad_documents:
                    raise UserError(f"data.path: {item.where}: {item.reason}; data.skip_bad_documents=true skips "
                                    "such documents")
                self.skipped += 1
                continue
            yield self.source.split(item.id, position, self.cfg.heldout_every), item


def split_texts(cfg: DataConfig, source: Source) -> CorpusSplit:
    """Every document's text per split, in source order (sources small enough to hold in memory)."""
    split = CorpusSplit(train=[], validation=[], calibration=[])
    for name, document in DocumentStream(cfg, source):
        getattr(split, name).append(document.text)
    return split
