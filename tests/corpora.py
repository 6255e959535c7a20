"""Small corpora of every source kind, built inside a test from the same documents, and a prepare-data config."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from slim.harness.config.load import load_config
from slim.harness.config.schema import SlimConfig
from slim.harness.data.corpus import read_chapters
from slim.harness.data.shards import TokenStream, read_index
from slim.harness.data.sources import SPLITS

ROOT = Path(__file__).resolve().parents[1]
KJV = ROOT / "data" / "corpus" / "kjv.txt.gz"
TEACHER = ROOT / "assets" / "tiny-teacher"  # its tokenizer is the teacher's own (4096 tokens)


def documents(count: int = 120) -> list[str]:
    """`count` KJV chapters (multi-line, no blank lines) plus two documents with non-ASCII text."""
    texts = [chapter.text for chapter in read_chapters(str(KJV))[:count - 2]]
    return [*texts, "Ünïcödé — “quoted” ✓ naïve café", "tabs\tand  double  spaces"]


def write_text_dir(texts: list[str], root: Path) -> Path:
    """One file per document, every third one gzipped, in a nested folder for some."""
    for number, text in enumerate(texts):
        path = root / ("sub" if number % 5 == 0 else "") / f"doc-{number:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if number % 3 == 0:
            with gzip.open(path.with_name(path.name + ".gz"), "wt", encoding="utf-8") as handle:
                handle.write(text + "\n")
        else:
            path.write_text(text + "\n", encoding="utf-8")
    return root


def write_text_blocks(texts: list[str], path: Path) -> Path:
    """All documents in one file, separated by blank lines."""
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path


def write_jsonl(texts: list[str], path: Path, field: str = "text") -> Path:
    lines = "".join(json.dumps({"id": number, field: text}) + "\n" for number, text in enumerate(texts))
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def write_parquet(texts: list[str], root: Path, files: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    size = -(-len(texts) // files)
    for number in range(files):
        part = texts[number * size:(number + 1) * size]
        pq.write_table(pa.table({"text": part, "n": list(range(len(part)))}), root / f"part-{number}.parquet")
    return root


def write_hf_disk(texts: list[str], root: Path) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": texts, "n": list(range(len(texts)))}).save_to_disk(str(root))
    return root


def prepare_config(source: str, path: Path, output: Path, *overrides: str) -> SlimConfig:
    return load_config([f"data.source={source}", f"data.path={path}", f"data.tokenizer={TEACHER}",
                        f"data.output={output}", "data.heldout_every=4", "data.shard_tokens=3000",
                        "data.seq_len=32", *overrides])


def split_streams(output: Path) -> dict[str, np.ndarray]:
    """Each split's whole token stream, as written."""
    index = read_index(output)
    dtype = index["identity"]["dtype"]
    streams = {}
    for split in SPLITS:
        records = index["shards"][split]
        stream = TokenStream([str(output / r["file"]) for r in records], [r["tokens"] for r in records], dtype)
        streams[split] = stream.read(0, len(stream))
    return streams


def document_tokens(output: Path) -> list[tuple[int, ...]]:
    """Every document's tokens (eos included) across all splits, sorted: what a source wrote, whatever its ids."""
    eos = read_index(output)["identity"]["eos_token_id"]
    found = []
    for stream in split_streams(output).values():
        ends = np.flatnonzero(stream == eos)
        found += [tuple(part) for part in np.split(stream, ends + 1) if len(part)]
    return sorted(found)
