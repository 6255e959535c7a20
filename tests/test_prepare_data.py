"""`slim prepare-data` and the memory-mapped readers: exact resume after a kill, damaged and foreign shards refused,
windows equal to in-memory packing, the same batches for 1 and 2 ranks, then `slim run` on prepared JSONL."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from slim.harness.cli.main import main as slim
from slim.harness.config.load import load_config
from slim.harness.data import prepare
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.data.packing import build_corpus_data, validation_windows, window_rows
from slim.harness.data.prepare import prepare_data
from slim.harness.data.sampler import ResumableBatchSampler
from slim.harness.data.shards import INDEX_FILE, read_index, sampled_sha256
from slim.harness.data.sources import SPLITS
from slim.harness.errors import UserError
from tests.corpora import ROOT, TEACHER, documents, split_streams, write_jsonl

TEXTS = documents()
# Runs prepare_data in a child that SIGKILLs itself just before its Nth index write: the shard that write would
# record is already renamed into place, the other splits' open shards are temp files. No timing involved.
KILLED_CHILD = """
import os, signal, sys
from slim.harness.config.load import load_config
from slim.harness.data import prepare
kill_before, real, calls = int(sys.argv[1]), prepare.write_text_atomic, []
def write_then_maybe_die(*args, **kwargs):
    calls.append(1)
    if len(calls) == kill_before:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
prepare.write_text_atomic = write_then_maybe_die
prepare.prepare_data(load_config(sys.argv[2:]))
"""


def _files(output: Path) -> dict[str, bytes]:
    return {str(path.relative_to(output)): path.read_bytes() for path in sorted(output.rglob("*")) if path.is_file()}


def _swapped_tokenizer(root: Path) -> Path:
    """A copy of the teacher's tokenizer with two ids swapped: same size, another vocabulary."""
    other = root / "tokenizer"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TEACHER / name, other / name)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    return other


def _overrides(path: Path, output: Path, *extra: str) -> list[str]:
    return ["data.source=jsonl", f"data.path={path}", f"data.tokenizer={TEACHER}", f"data.output={output}",
            "data.heldout_every=4", "data.shard_tokens=1500", "data.seq_len=32", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(JSONL corpus, its shards prepared in one uninterrupted run)."""
    root = tmp_path_factory.mktemp("prepared")
    path = write_jsonl(TEXTS, root / "corpus.jsonl")
    prepare_data(load_config(_overrides(path, root / "reference")))
    return path, root / "reference"


def test_killed_prepare_resumes_to_the_uninterrupted_shards(corpus, tmp_path):
    """Killed (SIGKILL) after two recorded shards, prepare-data leaves an incomplete index readers refuse; the rerun
    tokenizes only what was not recorded and ends with the uninterrupted run's files, byte for byte."""
    path, reference = corpus
    output = tmp_path / "out"
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD, "4", *_overrides(path, output)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    index = read_index(output)
    assert not index["complete"] and sum(len(records) for records in index["shards"].values()) == 2
    with pytest.raises(UserError, match="^data.output: .* is incomplete .*rerun `slim prepare-data`"):
        build_corpus_data(load_config(_overrides(path, output)).data)
    summary = prepare_data(load_config(_overrides(path, output)))
    total = sum(len(records) for records in read_index(reference)["shards"].values())
    assert summary.shards == total and summary.shards_written == total - 2
    assert _files(output) == _files(reference)


def test_a_long_document_in_pieces_gives_the_whole_document_shards(tmp_path, monkeypatch):
    """A 160k-character document tokenized in 8k-character checked pieces (spread over both tokenizer processes)
    gives the shards, byte for byte, of the run that tokenizes it whole, and stays within one shard."""
    long_document = "\n".join(TEXTS[:45])
    path = write_jsonl([*TEXTS[45:50], long_document, *TEXTS[50:]], tmp_path / "corpus.jsonl")
    whole = prepare_data(load_config(_overrides(path, tmp_path / "whole", "data.num_proc=2")))
    cuts: list[int] = []

    class SmallPieces(prepare.PieceCutter):
        def __init__(self, tokenizer) -> None:
            super().__init__(tokenizer, piece_chars=8000, window=512)

        def _cut(self, text: str, nominal: int) -> int:
            cuts.append(super()._cut(text, nominal))
            return cuts[-1]

    monkeypatch.setattr(prepare, "PieceCutter", SmallPieces)
    pieces = prepare_data(load_config(_overrides(path, tmp_path / "pieces", "data.num_proc=2")))
    assert len(cuts) >= len(long_document) // 8000 and pieces.unverified_cuts == whole.unverified_cuts == 0
    assert _files(tmp_path / "pieces") == _files(tmp_path / "whole")


def test_damaged_shards_are_refused_at_load_and_rewritten_alone(corpus, tmp_path):
    """A flipped or truncated shard is refused when read (sampled blocks, size); a rerun checksums every shard and
    rewrites exactly the damaged ones (flipped byte, truncated, deleted), byte for byte."""
    path, reference = corpus
    output = Path(shutil.copytree(reference, tmp_path / "out"))
    shards = sorted(output.glob("*/shard-*.bin"))
    flipped, truncated, deleted = shards[0], shards[2], shards[-1]
    flipped.write_bytes(bytes([flipped.read_bytes()[0] ^ 1]) + flipped.read_bytes()[1:])
    truncated.write_bytes(truncated.read_bytes()[:-2])
    with pytest.raises(UserError, match=rf"^data.output: {flipped} does not hold the tokens its index records "
                                        r"\(its sampled blocks differ\); rerun `slim prepare-data` with the same"):
        build_corpus_data(load_config(_overrides(path, output)).data)  # its first byte is in a sampled block
    (output / "kept.bin").write_bytes(flipped.read_bytes())
    flipped.write_bytes(shards_bytes := (reference / flipped.relative_to(output)).read_bytes())
    with pytest.raises(UserError, match=rf"^data.output: {truncated} holds .* bytes, the index says .*; rerun "
                                        "`slim prepare-data` with the same overrides"):
        build_corpus_data(load_config(_overrides(path, output)).data)
    flipped.write_bytes((output / "kept.bin").read_bytes())
    (output / "kept.bin").unlink()
    assert flipped.read_bytes() != shards_bytes
    deleted.unlink()
    summary = prepare_data(load_config(_overrides(path, output)))
    assert summary.shards_written == 3
    assert _files(output) == _files(reference)
    assert prepare_data(load_config(_overrides(path, output))).shards_written == 0


def test_shards_of_another_tokenizer_or_source_are_refused(corpus, tmp_path):
    """Reading shards with another tokenizer (same size, two ids swapped) or after the source changed is one line;
    preparing into them with another tokenizer is refused before anything is written."""
    path, reference = corpus
    other = _swapped_tokenizer(tmp_path)
    foreign = [*_overrides(path, reference), f"data.tokenizer={other}"]
    with pytest.raises(UserError, match=r"^data.output: .* prepared from other data or with another tokenizer "
                                        r"\(tokenizer_fingerprint "):
        build_corpus_data(load_config(foreign).data)
    before = _files(reference)
    with pytest.raises(UserError, match=r"^data.output: .* \(tokenizer_fingerprint .*pick another data.output"):
        prepare_data(load_config(foreign))
    assert _files(reference) == before
    changed = write_jsonl([*TEXTS, "one more document"], tmp_path / "corpus.jsonl")
    with pytest.raises(UserError, match=r"^data.output: .*\(source_fingerprint "):
        build_corpus_data(load_config([*_overrides(changed, reference)]).data)


def test_eval_and_cache_teacher_read_the_prepared_windows(corpus, tmp_path):
    """slim eval's validation windows come from the shards (any window length) when the evaluated model's tokenizer
    made them, and are refused otherwise; cache-teacher's row blocks are the windows themselves."""
    path, reference = corpus
    windows = validation_windows(load_config(_overrides(path, reference)).data)
    validation = windows(AutoTokenizer.from_pretrained(TEACHER), 16)
    stream = torch.from_numpy(split_streams(reference)["validation"])
    assert len(validation) == len(stream) // 17 and torch.equal(validation[2]["input_ids"], stream[34:50])
    with pytest.raises(UserError, match="^data.output: .* was prepared with another tokenizer than the evaluated"):
        windows(AutoTokenizer.from_pretrained(_swapped_tokenizer(tmp_path)), 16)
    train = build_corpus_data(load_config(_overrides(path, reference)).data).train
    rows = window_rows(train, 3, 7)
    assert rows.shape == (4, 33) and all(torch.equal(rows[i, :-1], train[3 + i]["input_ids"]) for i in range(4))


def test_a_source_without_prepared_shards_is_refused(corpus, tmp_path, capsys):
    """Only a source that ships its corpus packs in memory; the others point at slim prepare-data, and slim run /
    slim calibrate say so before compressing or loading the teacher."""
    path, _ = corpus
    with pytest.raises(UserError, match=r"^data.output: empty, and data.source=jsonl is read from prepared shards "
                                        r"only; run `slim prepare-data`"):
        build_corpus_data(load_config([*_overrides(path, tmp_path), "data.output=''"]).data)
    with pytest.raises(UserError, match=r"^data.output: no prepared shards in .*; run `slim prepare-data`"):
        build_corpus_data(load_config(_overrides(path, tmp_path / "empty")).data)
    unprepared = [*_overrides(path, tmp_path), "data.output=''", f"compress.teacher={TEACHER}",
                  f"compress.output={tmp_path / 'student'}", f"calibration.output={tmp_path / 'stats'}"]
    for command in ("run", "calibrate"):
        assert slim([command, *unprepared, "tracking.wandb=false"]) == 2
        assert f"slim {command}: error: data.output: empty, and data.source=jsonl" in capsys.readouterr().err
    assert not (tmp_path / "student").exists() and not (tmp_path / "stats").exists()


def test_windows_span_shards_and_equal_in_memory_packing(tmp_path):
    """The shipped corpus prepared into shards gives the windows it packs in memory (same tokenizer, same split):
    the backend tokenizer in worker processes tokenizes like the Hugging Face one, and a window spanning two shards
    reads across them."""
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TEACHER / name, tokenizer / name)
    common = [f"data.tokenizer={tokenizer}", "data.seq_len=50", "data.shard_tokens=40000", "data.num_proc=2"]
    prepare_data(load_config([*common, f"data.output={tmp_path / 'kjv'}"]))
    prepared = build_corpus_data(load_config([*common, f"data.output={tmp_path / 'kjv'}"]).data)
    in_memory = build_corpus_data(load_config(common).data)
    assert len(read_index(tmp_path / "kjv")["shards"]["train"]) > 10
    for split in SPLITS:
        windows = getattr(prepared, split)
        rows = torch.stack([torch.cat([windows[i]["input_ids"], windows[i]["labels"][-1:]])
                            for i in range(len(windows))])
        assert torch.equal(rows, getattr(in_memory, split).sequences), split


def test_one_and_two_ranks_see_the_same_batches_and_resume_exactly(corpus):
    """Over memory-mapped windows the seeded stream is the same for 1 process and for 2 (each its contiguous slice,
    one of them through DataLoader workers, which unpickle the dataset), and starting at step 3 replays steps 3..5."""
    path, reference = corpus
    train = build_corpus_data(load_config(_overrides(path, reference)).data).train
    spanning = train.stream.lengths[0] // train.window  # the window that holds the first shard's last token
    stream = torch.from_numpy(split_streams(reference)["train"])
    assert torch.equal(train[spanning]["input_ids"], stream[spanning * train.window:(spanning + 1) * train.window - 1])

    def batches(rank: int, world_size: int, start: int = 0, workers: int = 0) -> list[torch.Tensor]:
        sampler = ResumableBatchSampler(len(train), 8, seed=3, current_step=lambda: start, end_step=6, rank=rank,
                                        world_size=world_size)
        loader = DataLoader(train, batch_sampler=sampler, num_workers=workers)
        return [batch["input_ids"] for batch in loader]

    one = batches(0, 1)
    assert len(one) == 6 and len(train) // 8 > 6
    two = [torch.cat(pair) for pair in zip(batches(0, 2), batches(1, 2, workers=2), strict=True)]
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(one[3:], batches(0, 1, start=3), strict=True))


def test_datamodule_workers_give_the_same_batches(corpus):
    """data.num_workers=2 serves the datamodule's batches unchanged."""
    path, reference = corpus
    loaders = [CorpusDataModule(load_config(_overrides(path, reference, f"data.num_workers={n}")).data, 4)
               for n in (0, 2)]
    for module in loaders:
        module.setup("fit")
    streams = [[batch["input_ids"] for batch, _ in zip(module.train_dataloader(), range(3))] for module in loaders]
    assert all(torch.equal(a, b) for a, b in zip(*streams, strict=True))
    val = [next(iter(module.val_dataloader()))["labels"] for module in loaders]
    assert torch.equal(*val)


def test_prepare_data_then_slim_run_on_jsonl(tmp_path, capsys):
    """A JSONL corpus prepared with the tiny teacher's own tokenizer trains a compressed student end to end:
    calibration, distillation and validation all read the shards."""
    path = write_jsonl(TEXTS, tmp_path / "corpus.jsonl")
    data = ["data.source=jsonl", f"data.path={path}", f"data.tokenizer={TEACHER}", f"data.output={tmp_path / 'shards'}",
            "data.heldout_every=4", "data.seq_len=32"]
    assert slim(["prepare-data", *data, "data.num_proc=2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_written"] == summary["shards"] and summary["dtype"] == "uint16"
    run = [*data, f"compress.teacher={TEACHER}", f"distill.teacher={TEACHER}", f"compress.output={tmp_path / 's'}",
           f"distill.output={tmp_path / 'distilled'}", f"run_dir={tmp_path / 'run'}", "compress.depth.num_drop=1",
           "compress.experts.num_experts=8", "calibration.num_samples=8", "calibration.batch_size=4",
           "calibration.probe_tokens=32", "train.max_steps=2", "train.batch_size=2", "train.warmup_steps=1",
           "train.val_every=2", "train.val_batches=1", "train.num_threads=1", "distill.loss=kd+lm",
           "tracking.wandb=false"]
    assert slim(["run", *run]) == 0
    stats = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert stats["distill"]["steps"] == 2 and (tmp_path / "distilled" / "config.json").is_file()
    index = read_index(tmp_path / "shards")
    assert (tmp_path / "shards" / INDEX_FILE).is_file() and index["complete"]


def test_a_vocabulary_past_65536_ids_writes_uint32(tmp_path):
    """A tokenizer with ids beyond uint16 (a 70,000-word vocabulary) gets uint32 shards that read back exactly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{number}": number for number in range(70_000)}
    backend = Tokenizer(models.WordLevel({**words, "<unk>": 70_000, "<eos>": 70_001}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>").save_pretrained(
        tmp_path / "tokenizer")
    texts = [" ".join(f"w{(number * 7919 + k * 104729) % 70_000}" for k in range(40)) for number in range(60)]
    path = write_jsonl(texts, tmp_path / "corpus.jsonl")
    overrides = [*_overrides(path, tmp_path / "out"), f"data.tokenizer={tmp_path / 'tokenizer'}"]
    assert prepare_data(load_config(overrides)).dtype == "uint32"
    streams = split_streams(tmp_path / "out")
    assert max(int(stream.max()) for stream in streams.values()) == 70_001  # eos
    assert sorted(int(token) for stream in streams.values() for token in stream if token != 70_001) == sorted(
        words[word] for text in texts for word in text.split())


def test_a_same_size_foreign_shard_is_refused_at_load(corpus, tmp_path):
    """A shard overwritten by other tokens of the same byte length (another tokenizer's, another corpus's) passes the
    size check but not the sampled-block digest every open computes: one line naming it, before any training."""
    path, reference = corpus
    output = Path(shutil.copytree(reference, tmp_path / "out"))
    shard = sorted(output.glob("train/shard-*.bin"))[1]
    tokens = np.frombuffer(shard.read_bytes(), dtype=read_index(output)["identity"]["dtype"])
    shard.write_bytes(np.roll(tokens, 1).tobytes())  # the same ids, shifted: same size, other tokens
    with pytest.raises(UserError, match=rf"^data.output: {shard} does not hold the tokens its index records "
                                        r"\(its sampled blocks differ\); rerun `slim prepare-data`"):
        build_corpus_data(load_config(_overrides(path, output)).data)


def test_a_token_id_beyond_the_vocabulary_is_one_line_where_it_is_read(corpus, tmp_path):
    """Damage outside the sampled blocks can put an id the tokenizer does not have into a window: reading that window
    is one line naming it (the model's embedding would raise an IndexError traceback at the step)."""
    path, reference = corpus
    output = Path(shutil.copytree(reference, tmp_path / "out"))
    shard = sorted(output.glob("train/shard-*.bin"))[0]
    dtype = np.dtype(read_index(output)["identity"]["dtype"])
    tokens = np.frombuffer(shard.read_bytes(), dtype=dtype).copy()
    middle = len(tokens) // 2
    tokens[middle] = np.iinfo(dtype).max
    shard.write_bytes(tokens.tobytes())
    index = json.loads((output / INDEX_FILE).read_text())  # damage the sampled blocks miss, as in a large shard
    record = next(record for record in index["shards"]["train"] if output / record["file"] == shard)
    record["sample_sha256"] = sampled_sha256(shard)
    (output / INDEX_FILE).write_text(json.dumps(index))
    train = build_corpus_data(load_config(_overrides(path, output)).data).train
    window = middle // train.window
    with pytest.raises(UserError, match=rf"^data.output: window {window} holds token id {np.iinfo(dtype).max}, "
                                        r"beyond the tokenizer's \d+ ids"):
        train[window]
