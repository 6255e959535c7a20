"""Teacher work once: the teacher's validation perplexity is computed once per (teacher, data, batches) and reused
only on an exact key match."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.data.packing import file_sha256
from slim.harness.evaluation import teacher_metrics
from slim.harness.evaluation.perplexity import model_perplexity
from slim.harness.evaluation.teacher_metrics import cached_file_sha256, teacher_perplexity
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.training.distill import distill
from tests.fixtures.distill_pair import distill_config


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory of this test."""
    monkeypatch.setenv(teacher_metrics.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def perplexity_calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """The models whose perplexity teacher_metrics computes, one entry per computation."""
    calls: list[torch.nn.Module] = []

    def spy(model: torch.nn.Module, *args, **kwargs) -> float:
        calls.append(model)
        return model_perplexity(model, *args, **kwargs)

    monkeypatch.setattr(teacher_metrics, "model_perplexity", spy)
    return calls


@pytest.mark.slow
def test_a_grid_of_distills_computes_the_teacher_perplexity_once(tiny_config, teacher_dir: Path,
                                                                  student_dir: Path, cache: Path,
                                                                  perplexity_calls: list, tmp_path: Path) -> None:
    """Two cells on one teacher and data: one teacher pass, equal values; another data config: a second pass."""
    def cell(name: str, *overrides: str) -> float:
        cfg = distill_config(tiny_config, teacher_dir, student_dir, "train.max_steps=2", "distill.loss=kd",
                              f"run_dir={tmp_path / name}", f"distill.output={tmp_path / name / 'model'}", *overrides)
        return distill(cfg).teacher_val_perplexity

    first, second = cell("a"), cell("b", "train.lr=1e-3")
    assert len(perplexity_calls) == 1 and first == second
    other_data = cell("c", "data.seq_len=32")
    assert len(perplexity_calls) == 2 and other_data != first


@pytest.fixture
def val_loader(tiny_config) -> DataLoader:
    data = CorpusDataModule(tiny_config().data, batch_size=4)
    data.setup()
    return data.val_dataloader()


def test_cached_value_equals_the_computed_one_and_other_inputs_recompute(teacher_dir: Path,
                                                                        val_loader: DataLoader, cache: Path,
                                                                        perplexity_calls: list,
                                                                        tmp_path: Path) -> None:
    """A hit returns the computed number; another teacher file, batch count or batch size is a miss."""
    model, tokenizer = load_pretrained(teacher_dir)
    computed = teacher_perplexity(teacher_dir, model, val_loader, max_batches=2)
    assert teacher_perplexity(teacher_dir, model, val_loader, max_batches=2) == computed
    assert computed == model_perplexity(model, val_loader, max_batches=2) and len(perplexity_calls) == 1
    teacher_perplexity(teacher_dir, model, val_loader, max_batches=1)
    teacher_perplexity(teacher_dir, model, DataLoader(val_loader.dataset, batch_size=2), max_batches=2)
    assert len(perplexity_calls) == 3
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    changed = save_pretrained(model, tmp_path / "changed-teacher", tokenizer)
    assert teacher_perplexity(changed, model, val_loader, max_batches=2) != computed
    assert len(perplexity_calls) == 4


def test_a_stored_value_under_another_key_is_not_reused(teacher_dir: Path, val_loader: DataLoader,
                                                        cache: Path, perplexity_calls: list) -> None:
    """The stored key is compared, not only the file name; a torn file is recomputed."""
    model, _ = load_pretrained(teacher_dir)
    computed = teacher_perplexity(teacher_dir, model, val_loader, max_batches=1)
    (stored,) = (cache / "teacher_metrics").iterdir()
    record = json.loads(stored.read_text())
    stored.write_text(json.dumps({"key": {**record["key"], "metric": "other"}, "value": 1.0}))
    assert teacher_perplexity(teacher_dir, model, val_loader, max_batches=1) == computed
    stored.write_text("{")
    assert teacher_perplexity(teacher_dir, model, val_loader, max_batches=1) == computed
    assert len(perplexity_calls) == 3


def test_file_digest_is_rehashed_only_when_the_file_changes(tmp_path: Path, cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Same stat: the stored hash; rewritten (same size): hashed again, a new digest."""
    hashed: list[str] = []

    def spy(path: str) -> str:
        hashed.append(path)
        return file_sha256(path)

    monkeypatch.setattr(teacher_metrics, "file_sha256", spy)
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 64)
    first = cached_file_sha256(path)
    assert cached_file_sha256(path) == first and len(hashed) == 1
    path.write_bytes(b"b" * 64)
    assert cached_file_sha256(path) != first and len(hashed) == 2
