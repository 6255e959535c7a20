"""Offline teacher cache: the cached-support KD kernels, the cache's writer/reader, and distillation from it."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import default_collate

from slim.harness.cli.main import main as slim
from slim.harness.config.load import load_config
from slim.harness.data.packing import PackedDataset, build_corpus_data
from slim.harness.errors import UserError
from slim.harness.models.io import load_pretrained
from slim.harness.training import teacher_cache, teacher_cache_writer
from slim.harness.training.distill import distill
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.teacher_cache import CacheManifest, TeacherCache, shard_path
from slim.harness.training.teacher_cache_writer import write_shards
from slim.kernels.kd_loss.cached_reference import cached_kd_implementations, kd_loss_cached_reference
from slim.kernels.kd_loss.reference import kd_loss_reference
from tests.fixtures.distill_pair import SHORT

NUM_TOKENS, DIM, VOCAB, TOP_K = 63, 16, 101, 7
CORPUS_LINES = 600  # Genesis 1-23: ~290 train sequences of 64 tokens, so whole-split caches stay small


def kernel_inputs(top_k: int = TOP_K, seed: int = 0) -> dict[str, torch.Tensor]:
    """Odd sizes; the cached targets are the top-k log-probs of a random teacher; student tensors require grad."""
    generator = torch.Generator().manual_seed(seed)
    teacher_logits = torch.randn(NUM_TOKENS, VOCAB, generator=generator) * 3
    logprobs, ids = torch.log_softmax(teacher_logits, dim=-1).topk(top_k, dim=-1)
    return {
        "student_hidden": torch.randn(NUM_TOKENS, DIM, generator=generator).requires_grad_(),
        "student_head_weight": (torch.randn(VOCAB, DIM, generator=generator) * 0.3).requires_grad_(),
        "teacher_ids": ids.to(torch.int32),
        "teacher_logits": logprobs,
    }


def loss_and_grads(kernel, inputs: dict[str, torch.Tensor], **options) -> tuple[torch.Tensor, ...]:
    loss = kernel(**inputs, **options)
    return (loss.detach(), *torch.autograd.grad(loss, (inputs["student_hidden"], inputs["student_head_weight"])))


def assert_all_close(actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], rel: float) -> None:
    for got, want in zip(actual, expected, strict=True):
        assert (got - want).abs().max() <= rel * want.abs().max(), (got, want)


@pytest.mark.parametrize("top_k", [TOP_K, VOCAB])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_matches_reference(top_k: int, masked: bool) -> None:
    """Chunked cached KD equals the naive reference in value and both student gradients (fp32, 1e-5)."""
    inputs = kernel_inputs(top_k)
    mask = torch.arange(NUM_TOKENS) % 3 != 0 if masked else None
    expected = loss_and_grads(kd_loss_cached_reference, inputs, mask=mask)
    actual = loss_and_grads(cached_kd_implementations.get("chunked"), inputs, mask=mask, chunk_size=8)
    assert_all_close(actual, expected, 1e-5)


@pytest.mark.parametrize("name", cached_kd_implementations.keys())
def test_full_support_equals_full_kl(name: str) -> None:
    """With k = V (ids in any order) the loss and grads are the full-vocab KL's."""
    generator = torch.Generator().manual_seed(1)
    inputs = kernel_inputs()
    teacher_hidden, teacher_head = torch.randn(NUM_TOKENS, DIM, generator=generator), torch.randn(VOCAB, DIM)
    teacher_logprobs = torch.log_softmax(teacher_hidden @ teacher_head.T, dim=-1)
    ids = torch.stack([torch.randperm(VOCAB, generator=generator) for _ in range(NUM_TOKENS)])
    full = {**inputs, "teacher_ids": ids, "teacher_logits": teacher_logprobs.gather(1, ids)}
    actual = loss_and_grads(cached_kd_implementations.get(name), full)
    reference = {key: inputs[key] for key in ("student_hidden", "student_head_weight")}
    expected = loss_and_grads(kd_loss_reference, {**reference, "teacher_hidden": teacher_hidden,
                                                  "teacher_head_weight": teacher_head})
    assert_all_close(actual, expected, 1e-5)


@pytest.mark.parametrize("name", cached_kd_implementations.keys())
def test_student_equal_to_teacher_scores_zero_for_any_k(name: str) -> None:
    """The tail bucket makes the teacher itself a minimizer: loss 0 and zero gradient even for k = 3 of 101."""
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(NUM_TOKENS, DIM, generator=generator).requires_grad_()
    head = torch.randn(VOCAB, DIM, generator=generator).requires_grad_()
    logprobs, ids = torch.log_softmax(hidden @ head.T, dim=-1).detach().topk(3, dim=-1)
    loss, grad_hidden, grad_head = loss_and_grads(cached_kd_implementations.get(name), {
        "student_hidden": hidden, "student_head_weight": head, "teacher_ids": ids, "teacher_logits": logprobs})
    assert abs(loss.item()) < 1e-6 and grad_hidden.abs().max() < 1e-6 and grad_head.abs().max() < 1e-6


def test_hand_computed_single_token() -> None:
    """V=3, support {2, 0} with teacher probs 0.5 / 0.2 (tail 0.3 on token 1): loss = sum_S q log(q/p) + tail
    term; d/dz = p - q on S and p (1 - r_q / r_p) on the tail."""
    hidden = torch.tensor([[1.0]], requires_grad=True)
    head = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    loss = kd_loss_cached_reference(hidden, head, torch.tensor([[2, 0]]),
                                    torch.tensor([[math.log(0.5), math.log(0.2)]]))
    loss.backward()
    p = [math.exp(z) / sum(math.exp(y) for y in (1, 2, 3)) for z in (1, 2, 3)]
    q = {2: 0.5, 0: 0.2}
    expected = sum(qv * math.log(qv / p[v]) for v, qv in q.items()) + 0.3 * math.log(0.3 / p[1])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert head.grad.flatten().tolist() == pytest.approx([p[0] - 0.2, p[1] - 0.3, p[2] - 0.5], rel=1e-5)


def test_kernel_refuses_a_temperature_other_than_one() -> None:
    with pytest.raises(ValueError, match="^temperature: the cached-teacher loss is defined at 1 only"):
        kd_loss_cached_reference(**kernel_inputs(), temperature=2.0)


def test_kernel_refuses_bad_targets() -> None:
    """k > V, float ids, or logits shaped unlike the ids raise ValueError naming the argument."""
    inputs = kernel_inputs()
    with pytest.raises(ValueError, match="^teacher_ids"):
        kd_loss_cached_reference(**{**inputs, "teacher_ids": torch.zeros(NUM_TOKENS, VOCAB + 1, dtype=torch.long),
                                    "teacher_logits": torch.zeros(NUM_TOKENS, VOCAB + 1)})
    with pytest.raises(ValueError, match="^teacher_ids: expected an integer tensor"):
        kd_loss_cached_reference(**{**inputs, "teacher_ids": inputs["teacher_ids"].float()})
    with pytest.raises(ValueError, match="^teacher_logits"):
        kd_loss_cached_reference(**{**inputs, "teacher_logits": inputs["teacher_logits"][:, :2]})


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first chapters of the shipped corpus, so a cache of the whole train split takes seconds."""
    with gzip.open("data/corpus/kjv.txt.gz", "rt") as source:
        lines = [next(source) for _ in range(CORPUS_LINES)]
    path = tmp_path_factory.mktemp("corpus") / "genesis.txt"
    path.write_text("".join(lines))
    return path


@pytest.fixture
def small_config(tiny_config, small_corpus: Path, teacher_dir: Path, student_dir: Path, tmp_path: Path):
    """tiny_config on the small corpus, distilling the pruned student from the test teacher."""

    def make(*overrides: str):
        return tiny_config(*SHORT, f"data.path={small_corpus}", f"distill.teacher={teacher_dir}",
                           f"distill.student={student_dir}", f"distill.output={tmp_path / 'distilled'}",
                           f"distill.teacher_cache={tmp_path / 'cache'}", "distill.loss=kd", *overrides)

    return make


def small_cache(teacher: Path, train: PackedDataset, cache_dir: Path, top_k: int, per_shard: int) -> list[int]:
    """write_shards for `train` with a manifest whose data hashes are placeholders (no run-level check reads them)."""
    model, _ = load_pretrained(teacher)
    manifest = CacheManifest(teacher=str(teacher), teacher_fingerprint=teacher_cache.model_fingerprint(model),
                             vocab_size=model.config.vocab_size, top_k=top_k, seq_len=train.sequences.shape[1] - 1,
                             num_sequences=len(train), sequences_per_shard=per_shard, train_sha256="-",
                             tokenizer_sha256="-")
    return write_shards(model, train, cache_dir, manifest, batch_size=2)


@pytest.fixture
def train(small_config) -> PackedDataset:
    return build_corpus_data(small_config().data).train


def test_train_items_carry_their_index(train: PackedDataset) -> None:
    """Every packed item carries its row number, and a collated batch the rows it was built from."""
    batch = default_collate([train[index] for index in (7, 2)])
    assert batch["index"].tolist() == [7, 2]
    assert torch.equal(batch["input_ids"], train.sequences[[7, 2], :-1])


def test_roundtrip_equals_teacher_topk(teacher_dir: Path, train: PackedDataset, tmp_path: Path) -> None:
    """Read back in any order (across 2 shards, the last one partial), entries are the teacher's own top-k."""
    subset = PackedDataset(train.sequences[:5])
    assert small_cache(teacher_dir, subset, tmp_path, top_k=8, per_shard=3) == [0, 1]
    entries = TeacherCache(tmp_path).lookup(torch.tensor([4, 0, 3]))
    model, _ = load_pretrained(teacher_dir)
    with torch.no_grad():
        logits = model(input_ids=subset.sequences[[4, 0, 3], :-1]).logits
    logprobs, ids = torch.log_softmax(logits.float(), dim=-1).topk(8, dim=-1)
    assert entries.ids.dtype == torch.int32 and entries.logprobs.dtype == torch.float16
    assert torch.equal(entries.ids, ids.to(torch.int32))
    assert torch.allclose(entries.logprobs.float(), logprobs, rtol=2 ** -10, atol=1e-4)


def test_killed_run_resumes_at_the_missing_shard(teacher_dir: Path, train: PackedDataset, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed while writing shard 1 leaves shard 0; the rerun writes only shards 1 and 2, and the cache
    equals one written in a single run."""
    subset = PackedDataset(train.sequences[:7])
    real_save = teacher_cache_writer.save_safetensors_atomic

    def killed_at_second_shard(tensors, path, metadata):
        if Path(path).name != "shard-00000.safetensors":
            raise KeyboardInterrupt
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(teacher_cache_writer, "save_safetensors_atomic", killed_at_second_shard)
    with pytest.raises(KeyboardInterrupt):
        small_cache(teacher_dir, subset, tmp_path / "resumed", top_k=4, per_shard=3)
    left = sorted(path.name for path in (tmp_path / "resumed").iterdir())
    assert left == ["manifest.json", "shard-00000.safetensors"]
    monkeypatch.setattr(teacher_cache_writer, "save_safetensors_atomic", real_save)
    assert small_cache(teacher_dir, subset, tmp_path / "resumed", top_k=4, per_shard=3) == [1, 2]
    assert small_cache(teacher_dir, subset, tmp_path / "once", top_k=4, per_shard=3) == [0, 1, 2]
    everything = torch.arange(7)
    resumed = TeacherCache(tmp_path / "resumed").lookup(everything)
    once = TeacherCache(tmp_path / "once").lookup(everything)
    assert torch.equal(resumed.ids, once.ids) and torch.equal(resumed.logprobs, once.logprobs)
    with pytest.raises(UserError, match=r"^distill.teacher_cache: .* holds another cache \(top_k 4 != 5\)"):
        small_cache(teacher_dir, subset, tmp_path / "once", top_k=5, per_shard=3)


def _module(teacher: Path, student: Path, **distill_fields: object) -> DistillModule:
    cfg = load_config([f"distill.teacher={teacher}", f"distill.student={student}", "distill.loss=kd",
                       *(f"distill.{key}={value}" for key, value in distill_fields.items())])
    module = DistillModule(cfg.distill, cfg.train)
    module.configure_model()
    return module


def test_full_vocab_cache_gives_the_live_teacher_loss(teacher_dir: Path, student_dir: Path,
                                                      train: PackedDataset, tmp_path: Path) -> None:
    """With k = V the step-1 KD term from the cache equals the live teacher's (fp16 storage: 1e-3 relative)."""
    subset = PackedDataset(train.sequences[:4])
    batch = default_collate([subset[index] for index in range(4)])
    small_cache(teacher_dir, subset, tmp_path, top_k=1024, per_shard=4)
    with torch.no_grad():
        live = _module(teacher_dir, student_dir).step_loss(batch).terms["kd"].item()
        cached = _module(teacher_dir, student_dir, teacher_cache=tmp_path).step_loss(batch).terms["kd"].item()
    assert cached == pytest.approx(live, rel=1e-3)


def test_distill_from_cache_lowers_kd(small_config, teacher_dir: Path, student_dir: Path,
                                      train: PackedDataset, capsys: pytest.CaptureFixture) -> None:
    """`slim cache-teacher` writes the whole train split (a rerun writes nothing); 12 KD steps from the cache
    lower the cached-support KD term of the student on train batches."""
    cfg = small_config("distill.teacher_cache_top_k=32", "train.max_steps=12", "train.val_every=12")
    overrides = [f"data.tokenizer={cfg.data.tokenizer}", f"data.path={cfg.data.path}",
                 f"distill.teacher={teacher_dir}", f"distill.teacher_cache={cfg.distill.teacher_cache}",
                 "distill.teacher_cache_top_k=32", "data.vocab_size=1024", "data.seq_len=64"]
    assert slim(["cache-teacher", *overrides]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bytes_per_token"] == 32 * 6 and summary["shards_written"] == summary["num_shards"]
    assert slim(["cache-teacher", *overrides]) == 0
    assert json.loads(capsys.readouterr().out)["shards_written"] == 0
    batches = [default_collate([train[index] for index in range(start, start + 4)]) for start in (0, 100)]
    before = cached_kd(teacher_dir, student_dir, cfg.distill.teacher_cache, batches)
    distill(cfg)
    after = cached_kd(teacher_dir, Path(cfg.distill.output), cfg.distill.teacher_cache, batches)
    assert after < 0.9 * before, (before, after)


def cached_kd(teacher: Path, student: Path, cache_dir: str, batches: list[dict]) -> float:
    """Mean KD term over the cached support."""
    module = _module(teacher, student, teacher_cache=cache_dir)
    with torch.no_grad():
        return sum(module.step_loss(batch).terms["kd"].item() for batch in batches) / len(batches)


@pytest.mark.parametrize(("overrides", "message"), [
    (["distill.loss=kd+mtp_kd"], r"^distill.loss: 'kd\+mtp_kd' has an mtp_kd term but distill.teacher_cache holds "),
    (["data.seq_len=32"], r"^data.seq_len: 32 differs from the 64 of distill.teacher_cache"),
    ([], r"^distill.teacher_cache: .* caches 4 train sequences, the data has \d+; rewrite it"),
])
def test_mismatched_cache_is_refused_before_work(small_config, teacher_dir: Path, train: PackedDataset,
                                                 overrides: list[str], message: str) -> None:
    """A cache that cannot serve the run fails with one line before the run directory exists."""
    cfg = small_config(*overrides)
    small_cache(teacher_dir, PackedDataset(train.sequences[:4]), Path(cfg.distill.teacher_cache), top_k=4, per_shard=2)
    with pytest.raises(UserError, match=message):
        distill(cfg)
    assert not Path(cfg.run_dir).exists()


def test_missing_manifest_shard_or_teacher_is_refused(small_config, teacher_dir: Path, student_dir: Path,
                                                      train: PackedDataset) -> None:
    """No manifest, a missing shard, or another teacher's model: one line naming distill.teacher_cache."""
    cache_dir = Path(small_config().distill.teacher_cache)
    with pytest.raises(UserError, match=r"^distill.teacher_cache: no manifest.json in .*slim cache-teacher"):
        distill(small_config())
    small_cache(teacher_dir, PackedDataset(train.sequences[:4]), cache_dir, top_k=4, per_shard=2)
    with pytest.raises(UserError, match=r"^distill.teacher_cache: .* written by teacher .*, not by distill.teacher"):
        _module(student_dir, student_dir, teacher_cache=cache_dir)
    shard_path(cache_dir, 1).unlink()
    with pytest.raises(UserError, match=r"^distill.teacher_cache: 1 of 2 shards missing in .*shard-00001"):
        TeacherCache(cache_dir)


@pytest.mark.parametrize(("overrides", "message"), [
    (["distill.teacher_cache=''"], r"distill.teacher_cache: empty; set the directory"),
    (["distill.teacher_cache_top_k=2000"], r"distill.teacher_cache_top_k: must be in \[1, 1024\]"),
])
def test_cache_teacher_refuses_bad_fields(small_config, overrides: list[str], message: str,
                                          capsys: pytest.CaptureFixture) -> None:
    """`slim cache-teacher` exits 2 with one line naming the field, before reading data or models."""
    cfg = small_config(*overrides)
    args = [f"distill.teacher={cfg.distill.teacher}", f"distill.teacher_cache={cfg.distill.teacher_cache}",
            f"distill.teacher_cache_top_k={cfg.distill.teacher_cache_top_k}"]
    assert slim(["cache-teacher", *args]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    with pytest.raises(UserError, match=message):
        teacher_cache_writer.cache_teacher(cfg)


def test_cache_teacher_without_room_is_refused_before_the_teacher_runs(small_config, monkeypatch) -> None:
    """A cache that will not fit the filesystem is one line naming distill.teacher_cache and the sizes, before the
    teacher is loaded (it used to fail after the teacher work, leaving a manifest behind)."""
    cfg = small_config()
    monkeypatch.setattr("slim.harness.outputs.shutil.disk_usage", lambda path: SimpleNamespace(free=1024))
    monkeypatch.setattr(teacher_cache_writer, "load_pretrained", lambda *args, **kwargs: pytest.fail("loaded"))
    with pytest.raises(UserError, match=r"^distill.teacher_cache: .* has 0 MiB free, the output needs about"):
        teacher_cache_writer.cache_teacher(cfg)
    assert not Path(cfg.distill.teacher_cache).exists()
