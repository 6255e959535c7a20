"""Data sources: the same documents give the same tokens whatever the source, a stable split, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from slim.harness.config.schema import DataConfig
from slim.harness.data.corpus import read_chapters, split_corpus
from slim.harness.data.documents import DocumentStream, split_texts
from slim.harness.data.prepare import prepare_data
from slim.harness.data.sources import get_source, hash_split, read_lines, sources
from slim.harness.data.sources.text import _document, _whole_file
from slim.harness.errors import UserError
from slim.harness.methods_catalog import format_catalog
from tests.corpora import (
    KJV,
    TEACHER,
    document_tokens,
    documents,
    prepare_config,
    split_streams,
    write_hf_disk,
    write_jsonl,
    write_parquet,
    write_text_blocks,
    write_text_dir,
)

TEXTS = documents()
SOURCES = {
    "text": lambda root: write_text_dir(TEXTS, root / "texts"),
    "text_blocks": lambda root: write_text_blocks(TEXTS, root / "all.txt"),
    "jsonl": lambda root: write_jsonl(TEXTS, root / "corpus.jsonl"),
    "jsonl_gz": lambda root: write_jsonl(TEXTS, root / "corpus.jsonl.gz"),
    "parquet": lambda root: write_parquet(TEXTS, root / "parquet"),
    "hf_disk": lambda root: write_hf_disk(TEXTS, root / "saved"),
}


def _source(kind: str) -> tuple[str, list[str]]:
    """(data.source, extra overrides) of a corpus kind."""
    if kind == "text_blocks":
        return "text", ["data.text_documents=block"]
    return kind.removesuffix("_gz"), []


@pytest.fixture(scope="module")
def expected() -> list[tuple[int, ...]]:
    """Every document's tokens by the teacher's tokenizer, eos appended, sorted."""
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    ids = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    return sorted(tuple([*row, tokenizer.eos_token_id]) for row in ids)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_every_source_yields_the_same_documents_and_tokens(kind, expected, tmp_path):
    """Each source reads back the very documents written, and prepare-data turns them into the tokens the teacher's
    tokenizer gives each text (eos after each), whatever the format."""
    source, extra = _source(kind)
    cfg = prepare_config(source, SOURCES[kind](tmp_path), tmp_path / "out", *extra)
    texts = sorted(document.text for _, document in DocumentStream(cfg.data, get_source(cfg.data)))
    assert texts == sorted(TEXTS)
    prepare_data(cfg)
    assert document_tokens(tmp_path / "out") == expected


def test_split_depends_only_on_the_document_id(tmp_path):
    """The split is a function of the id: two preparations with other shard sizes and process counts write the same
    split streams, each split keeps its documents in source order, and each held-out split gets about 1/4."""
    path = write_jsonl(TEXTS, tmp_path / "corpus.jsonl")
    prepare_data(prepare_config("jsonl", path, tmp_path / "a", "data.shard_tokens=500", "data.num_proc=2"))
    prepare_data(prepare_config("jsonl", path, tmp_path / "b", "data.shard_tokens=100000"))
    a, b = split_streams(tmp_path / "a"), split_streams(tmp_path / "b")
    assert all((a[split] == b[split]).all() for split in a)
    cfg = prepare_config("jsonl", path, tmp_path / "a").data
    split = split_texts(cfg, get_source(cfg))
    assert split.validation == [text for number, text in enumerate(TEXTS)
                                if hash_split(f"corpus.jsonl:{number + 1}", number, 4) == "validation"]
    for held_out in (split.validation, split.calibration):
        assert 0.1 < len(held_out) / len(TEXTS) < 0.4
    assert [hash_split(f"doc:{n}", 0, 20) for n in range(50)] == [hash_split(f"doc:{n}", 9, 20) for n in range(50)]


def test_kjv_source_keeps_the_chapter_position_split():
    """The shipped corpus's split is its historical one (chapter position), so the demo's numbers stay."""
    cfg = DataConfig()
    assert split_texts(cfg, get_source(cfg)) == split_corpus(read_chapters(str(KJV)), cfg.heldout_every)


def test_sources_are_listed_by_slim_methods():
    """The registry holds every source with a one-line doc, and `slim methods` lists them."""
    assert sources.keys() == ["hf_disk", "jsonl", "kjv", "parquet", "text"]
    assert "data source [slim.data_sources]: " in format_catalog() and "jsonl" in format_catalog()


def _refused(cfg, match: str, output: Path) -> None:
    with pytest.raises(UserError, match=match) as error:
        prepare_data(cfg)
    assert "\n" not in str(error.value)
    assert not output.exists(), "nothing may be written before the input is checked"


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf_disk"])
def test_missing_text_field_is_one_line_before_work(kind, tmp_path):
    """A corpus without data.text_field is refused naming the field and what the corpus has."""
    path = SOURCES[kind](tmp_path)
    _refused(prepare_config(kind, path, tmp_path / "out", "data.text_field=body"),
             r"^data.text_field: no (field|column) 'body' in .*\(its (fields|columns): ", tmp_path / "out")


def test_non_utf8_document_names_file_and_line_or_is_skipped(tmp_path):
    """Undecodable bytes are refused naming the file and line; data.skip_bad_documents=true skips and counts them."""
    path = write_jsonl(TEXTS, tmp_path / "corpus.jsonl")
    raw = path.read_bytes().splitlines(keepends=True)
    raw[6] = b'{"text": "bad \xff\xfe bytes"}\n'
    raw[9] = b"{not json\n"
    path.write_bytes(b"".join(raw))
    _refused(prepare_config("jsonl", path, tmp_path / "out"), rf"^data.path: {path}:7: not UTF-8 .*"
             "data.skip_bad_documents=true skips", tmp_path / "out")
    summary = prepare_data(prepare_config("jsonl", path, tmp_path / "out", "data.skip_bad_documents=true"))
    assert summary.skipped_documents == 2 and sum(summary.documents.values()) == len(TEXTS) - 2


def test_non_utf8_text_file_names_its_line(tmp_path):
    """A text file with a bad byte on line 3 is refused naming that line."""
    root = write_text_dir(TEXTS[:8], tmp_path / "texts")
    bad = root / "doc-00001.txt"
    bad.write_bytes(b"line one\nline two\nline \xc3\x28 three\n")
    _refused(prepare_config("text", root, tmp_path / "out"), rf"^data.path: {bad}:3: not UTF-8", tmp_path / "out")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_source_is_refused(content, tmp_path):
    """A source without documents is one line, nothing written."""
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    _refused(prepare_config("jsonl", path, tmp_path / "out"), "^data.path: no documents in", tmp_path / "out")
    (tmp_path / "dir").mkdir()
    _refused(prepare_config("jsonl", tmp_path / "dir", tmp_path / "out"), r"^data.path: no JSONL files \(",
             tmp_path / "out")


def test_a_split_without_documents_is_refused(tmp_path):
    """Three documents cannot fill three splits at heldout_every=20: refused, naming the split."""
    path = write_jsonl(TEXTS[:3], tmp_path / "few.jsonl")
    _refused(prepare_config("jsonl", path, tmp_path / "out", "data.heldout_every=20"),
             r"^data.path: the (validation|calibration) split got none of the 3 documents", tmp_path / "out")


def test_an_unknown_source_is_refused_when_the_config_loads(tmp_path):
    """The source key is checked against the registry at load, before any file is read or written."""
    path = write_text_dir(TEXTS[:4], tmp_path / "texts")
    with pytest.raises(UserError, match=r"^data.source: unknown data source 'csv'; valid: .*jsonl"):
        prepare_config("text", path, tmp_path / "out", "data.source=csv")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "match"), [
    ("data.text_documents=page", r"^data.text_documents: must be one of file, block"),
    ("data.heldout_every=2", r"^data.heldout_every: must be >= 3, got 2"),
    ("data.num_proc=0", r"^data.num_proc: must be >= 1, got 0"),
])
def test_bad_options_are_one_line(override, match, tmp_path):
    """Bad data options name their field before any work (a range the schema declares: when the config loads)."""
    path = write_text_dir(TEXTS[:4], tmp_path / "texts")
    with pytest.raises(UserError, match=match) as error:
        prepare_data(prepare_config("text", path, tmp_path / "out", override))
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_damaged_gzip_is_one_line(tmp_path):
    """A truncated .jsonl.gz is refused naming the file."""
    path = write_jsonl(TEXTS, tmp_path / "corpus.jsonl.gz")
    path.write_bytes(path.read_bytes()[:200])
    _refused(prepare_config("jsonl", path, tmp_path / "out"), rf"^data.path: cannot read {path}", tmp_path / "out")


def test_non_string_field_is_a_bad_document(tmp_path):
    """A null text is a bad document: refused naming the line, or skipped."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS) + '{"text": null}\n')
    _refused(prepare_config("jsonl", path, tmp_path / "out"),
             rf"^data.path: {path}:{len(TEXTS) + 1}: field 'text' is NoneType", tmp_path / "out")


@pytest.mark.parametrize("content", [b"", b"a", b"a\n", b"a\n\n", b"a\r\nb\r\n", b"a\r\r\nb\rc\r", b"\n\n",
                                     b"x\ry\n\r", b"ok\n\xff\xfebad\n", b"line1\nli\xc3ne2"])
def test_a_whole_file_document_reads_as_its_lines_joined(tmp_path, content):
    """data.text_documents=file reads a file in one piece (bounded copies for a book-sized file); it gives what
    joining its lines gives, line endings, stray carriage returns and the line of a bad byte included."""
    path = tmp_path / "doc.txt"
    path.write_bytes(content)
    assert _whole_file("doc.txt", path) == _document("doc.txt", "doc.txt", list(read_lines(path)), path)
