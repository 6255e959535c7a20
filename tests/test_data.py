"""Corpus reading and split, tokenizer round-trip, packing, on-disk cache, data module, bad input."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import pytest
import torch

from slim.harness.config.schema import DataConfig
from slim.harness.data import packing
from slim.harness.data import tokenizer as tokenizer_module
from slim.harness.data.corpus import read_chapters, split_corpus
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.data.packing import CorpusData, build_corpus_data, pack_texts
from slim.harness.data.tokenizer import load_or_train_tokenizer
from slim.harness.errors import UserError

CORPUS = str(Path(__file__).resolve().parents[1] / "data" / "corpus" / "kjv.txt.gz")
HELDOUT_EVERY = 20


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    tokenizer_dir = tmp_path_factory.mktemp("artifacts") / "tokenizer"
    return DataConfig(path=CORPUS, tokenizer=str(tokenizer_dir), vocab_size=1024, seq_len=64)


@pytest.fixture(scope="module")
def chapters():
    return read_chapters(CORPUS)


@pytest.fixture(scope="module")
def data(cfg: DataConfig) -> CorpusData:
    return build_corpus_data(cfg)


def test_read_chapters_groups_verses():
    """Every verse lands in exactly one chapter, in file order, with its reference stripped."""
    chapters = read_chapters(CORPUS)
    assert len(chapters) == 1189
    assert (chapters[0].book, chapters[0].chapter) == ("Ge", 1)
    assert (chapters[-1].book, chapters[-1].chapter) == ("Rev", 22)
    assert chapters[0].text.startswith("In the beginning God created the heaven and the earth.\nAnd the earth")
    assert sum(chapter.text.count("\n") + 1 for chapter in chapters) == 31102


def test_plain_and_gzip_corpus_read_the_same(tmp_path: Path):
    """A plain-text copy of the corpus yields the same chapters as the gzip file."""
    plain = tmp_path / "kjv.txt"
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        plain.write_text(f.read(), encoding="utf-8")
    assert read_chapters(str(plain)) == read_chapters(CORPUS)


def test_split_is_deterministic_disjoint_and_covering(chapters):
    """The split depends only on chapter position, uses each chapter once, and holds out ~1/heldout_every each."""
    split = split_corpus(chapters, HELDOUT_EVERY)
    assert split == split_corpus(chapters, HELDOUT_EVERY)
    expected_validation = [c.text for i, c in enumerate(chapters) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    expected_calibration = [c.text for i, c in enumerate(chapters) if i % HELDOUT_EVERY == HELDOUT_EVERY - 2]
    assert split.validation == expected_validation
    assert split.calibration == expected_calibration
    assert sorted(split.train + split.validation + split.calibration) == sorted(c.text for c in chapters)
    assert len(set(split.train) & set(split.validation + split.calibration)) == 0
    for held_out in (split.validation, split.calibration):
        assert abs(len(held_out) / len(chapters) - 1 / HELDOUT_EVERY) <= 1 / len(chapters)


def test_tokenizer_round_trips_whole_corpus(data: CorpusData, chapters):
    """decode(encode(text)) is the identity on every chapter of the corpus, newlines included."""
    texts = [chapter.text for chapter in chapters]
    encodings = data.tokenizer(texts, add_special_tokens=False)["input_ids"]
    decoded = data.tokenizer.batch_decode(encodings)
    mismatches = [i for i, (text, back) in enumerate(zip(texts, decoded)) if text != back]
    assert mismatches == []
    assert len(data.tokenizer) == 1024
    assert data.tokenizer.eos_token == data.tokenizer.bos_token == data.tokenizer.pad_token == "<|endoftext|>"


def test_pack_texts_matches_reference_stream(data: CorpusData):
    """Rows are the disjoint seq_len+1 windows of the eos-separated token stream, partial tail dropped."""
    texts, seq_len = data.split.validation[:5], 16
    stream: list[int] = []
    for text in texts:
        stream.extend(data.tokenizer.encode(text, add_special_tokens=False))
        stream.append(data.tokenizer.eos_token_id)
    packed = pack_texts(texts, data.tokenizer, seq_len)
    num_rows = len(stream) // (seq_len + 1)
    assert packed.shape == (num_rows, seq_len + 1)
    assert packed.dtype == torch.long
    assert packed.flatten().tolist() == stream[: num_rows * (seq_len + 1)]


def test_packed_dataset_labels_are_inputs_shifted(data: CorpusData):
    """Each item's labels are its input_ids shifted left by one token."""
    item = data.train[3]
    row = data.train.sequences[3]
    assert item["input_ids"].shape == item["labels"].shape == (64,)
    assert torch.equal(item["input_ids"], row[:-1])
    assert torch.equal(item["labels"], row[1:])
    assert torch.equal(item["labels"][:-1], item["input_ids"][1:])


def test_every_split_is_packed(data: CorpusData):
    """Every split is packed from its own texts and none is empty."""
    for name in packing.SPLITS:
        assert torch.equal(getattr(data, name).sequences, pack_texts(getattr(data.split, name), data.tokenizer, 64))
    assert len(data.train) > 10 * len(data.validation) > 0


def test_second_build_hits_cache(cfg: DataConfig, data: CorpusData, monkeypatch: pytest.MonkeyPatch):
    """A second build returns identical tensors without retraining the tokenizer or re-packing."""
    tokenizer_file = os.path.join(cfg.tokenizer, "tokenizer.json")
    mtime = os.stat(tokenizer_file).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", fail)
    monkeypatch.setattr(packing, "pack_texts", fail)
    again = build_corpus_data(cfg)
    for name in packing.SPLITS:
        assert torch.equal(getattr(again, name).sequences, getattr(data, name).sequences)
    assert os.stat(tokenizer_file).st_mtime_ns == mtime
    assert not [p for p in os.listdir(os.path.dirname(cfg.tokenizer)) if ".tmp-" in p]
    assert not [p for p in os.listdir(cfg.tokenizer) if p.endswith(".tmp")]


def test_datamodule_order_depends_only_on_seed(cfg: DataConfig, data: CorpusData):
    """Same seed gives the same shuffled train batches; validation is unshuffled; partial batches are dropped."""

    def first_batches(seed: int) -> list[torch.Tensor]:
        module = CorpusDataModule(cfg, batch_size=7, seed=seed)
        module.setup("fit")
        loader = module.train_dataloader()
        assert len(loader) == len(data.train) // 7
        return [batch["input_ids"] for batch, _ in zip(loader, range(3))]

    assert all(torch.equal(a, b) for a, b in zip(first_batches(0), first_batches(0)))
    assert not torch.equal(first_batches(0)[0], first_batches(1)[0])
    module = CorpusDataModule(cfg, batch_size=7)
    module.setup("validate")
    assert module.tokenizer is module.data.tokenizer
    assert torch.equal(next(iter(module.val_dataloader()))["input_ids"], data.validation.sequences[:7, :-1])
    assert torch.equal(next(iter(module.calibration_dataloader()))["labels"], data.calibration.sequences[:7, 1:])


def test_missing_corpus_names_field(tmp_path: Path):
    """A missing corpus file fails with one error naming data.path."""
    cfg = DataConfig(path=str(tmp_path / "nope.txt.gz"), tokenizer=str(tmp_path / "tok"))
    with pytest.raises(UserError, match="data.path: file not found"):
        build_corpus_data(cfg)


@pytest.mark.parametrize("content", ["", "Ge1:1 In the beginning\nnot a verse line\n"])
def test_malformed_corpus_names_field(tmp_path: Path, content: str):
    """An empty corpus or a line without a verse reference fails naming data.path."""
    path = tmp_path / "corpus.txt"
    path.write_text(content)
    with pytest.raises(UserError, match="data.path"):
        read_chapters(str(path))


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_gzip_corpus_is_one_line(tmp_path: Path, damage: str):
    """A .gz corpus cut short (EOFError) or with flipped bytes (zlib error) is a UserError naming the field and file,
    not a traceback (issue 11 item 10)."""
    packed = Path(CORPUS).read_bytes()
    path = tmp_path / "corpus.txt.gz"
    if damage == "truncate":
        path.write_bytes(packed[: len(packed) // 2])
    else:
        middle = len(packed) // 2
        path.write_bytes(packed[:middle] + bytes(b ^ 0xFF for b in packed[middle:middle + 64]) + packed[middle + 64:])
    with pytest.raises(UserError, match=rf"^data.path: cannot read {path} as UTF-8 text"):
        read_chapters(str(path))


def test_corrupt_tokenizer_dir_names_field(cfg: DataConfig, tmp_path: Path):
    """A non-empty tokenizer directory that does not load fails naming data.tokenizer."""
    corrupt = tmp_path / "tokenizer"
    corrupt.mkdir()
    (corrupt / "tokenizer.json").write_text("{ not json")
    (corrupt / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    with pytest.raises(UserError, match="data.tokenizer"):
        build_corpus_data(dataclasses.replace(cfg, tokenizer=str(corrupt)))


def test_saved_tokenizer_keeps_its_own_vocabulary(cfg: DataConfig, data: CorpusData):
    """data.vocab_size only sizes a BPE trained when data.tokenizer is missing: a saved tokenizer (a teacher's) is
    loaded as it is, never retrained; consumers compare it with the model's vocabulary."""
    def fail() -> list[str]:
        raise AssertionError("a saved tokenizer must not be retrained")

    loaded = load_or_train_tokenizer(dataclasses.replace(cfg, vocab_size=4096), fail)
    assert loaded.get_vocab() == data.tokenizer.get_vocab()


@pytest.mark.parametrize(
    ("override", "field"),
    [({"seq_len": 2}, "data.seq_len"), ({"heldout_every": 2}, "data.heldout_every"),
     ({"vocab_size": 100}, "data.vocab_size")],
)
def test_bad_config_values_name_field(tmp_path: Path, override: dict, field: str):
    """Out-of-range data settings fail before any tokenizer is trained, naming the field."""
    cfg = DataConfig(path=CORPUS, tokenizer=str(tmp_path / "tok"), **override)
    with pytest.raises(UserError, match=field):
        build_corpus_data(cfg)
    assert not (tmp_path / "tok").exists()
