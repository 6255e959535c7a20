"""Shared fixtures: a small corpus config and tiny model overrides so tests run in seconds on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from slim.harness.config.load import load_config
from slim.harness.config.schema import SlimConfig

# One intra-op thread: with two threads on a 2-core machine that is busy with anything else, torch's
# threads wait on each other and tiny models run ~100x slower; alone, one thread costs little.
torch.set_num_threads(1)

# Fixtures several modules share live in tests/fixtures/, registered here: no test imports another test file.
pytest_plugins = ["tests.fixtures.compress_teacher", "tests.fixtures.distill_pair"]

TINY_OVERRIDES = [
    "model=tiny",
    # tests keep the 4-layer shape (3 Gated DeltaNet + 1 attention, hidden 128): half the cost of the 8-layer teacher
    "model.num_hidden_layers=4",
    "model.hidden_size=128",
    "model.vocab_size=1024",
    "data.vocab_size=1024",
    "data.seq_len=64",
    "train.num_threads=1",
    "tracking.wandb=false",  # tests that check W&B turn it on themselves
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenizer (vocab 1024) trained once per test session."""
    return tmp_path_factory.mktemp("tokenizer") / "tok"


@pytest.fixture
def tiny_config(tmp_path: Path, tokenizer_dir: Path):
    """Build a SlimConfig for a tiny run in `tmp_path` with extra overrides."""

    def make(*overrides: str) -> SlimConfig:
        return load_config([*TINY_OVERRIDES, f"data.tokenizer={tokenizer_dir}", f"run_dir={tmp_path / 'run'}",
                            *overrides])

    return make


@pytest.fixture(scope="session", autouse=True)
def slim_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harness's shared caches (slim.harness.evaluation.teacher_metrics) in a session temp dir, not in ~/.cache;
    subprocesses inherit it."""
    path = tmp_path_factory.mktemp("slim-cache")
    os.environ["SLIM_CACHE_DIR"] = str(path)
    return path
