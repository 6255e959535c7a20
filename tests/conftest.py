"""Shared fixtures: a small corpus config and tiny model overrides so tests run in seconds on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config.load import load_config
from harness.config.schema import SlimConfig

TINY_OVERRIDES = [
    "model=tiny",
    "model.vocab_size=1024",
    "data.vocab_size=1024",
    "data.seq_len=64",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenizer (vocab 1024) trained once per test session."""
    return tmp_path_factory.mktemp("tokenizer") / "tok"


@pytest.fixture
def tiny_config(tmp_path: Path, tokenizer_dir: Path):
    """Build a SlimConfig for a tiny run in `tmp_path` with extra overrides."""

    def make(*overrides: str) -> SlimConfig:
        return load_config([*TINY_OVERRIDES, f"data.tokenizer_dir={tokenizer_dir}", f"run_dir={tmp_path / 'run'}",
                            *overrides])

    return make
