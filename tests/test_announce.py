"""Every command says what it made: a model directory with the lines that load it in plain transformers
(`trust_remote_code=True` exactly when it ships its own modeling code), and SLIM_MAX_STEPS's cap in one line."""

from __future__ import annotations

import json

from slim.harness.cli.announce import load_lines
from slim.harness.cli.main import main as slim
from slim.harness.config import load


def test_load_lines_ask_for_remote_code_only_for_portable_students(tmp_path):
    stock, portable = tmp_path / "stock", tmp_path / "portable"
    for directory, config in ((stock, {"model_type": "qwen3_next"}),
                              (portable, {"model_type": "slim_qwen3_next",
                                          "auto_map": {"AutoConfig": "modeling_slim.SlimQwen3NextConfig"}})):
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(config))
    assert load_lines(stock) == [f'AutoModelForCausalLM.from_pretrained("{stock}")',
                                 f'AutoTokenizer.from_pretrained("{stock}")']
    assert all(line.endswith(", trust_remote_code=True)") for line in load_lines(portable))


def test_a_step_cap_is_announced_once(monkeypatch, capsys, caplog):
    monkeypatch.setenv("SLIM_MAX_STEPS", "12")
    monkeypatch.setattr(load, "_ANNOUNCED_CAPS", set())  # earlier tests of this process may have announced it
    assert slim(["config", "train.max_steps=100", "train.warmup_steps=10"]) == 0
    assert slim(["config", "train.max_steps=100", "train.warmup_steps=10"]) == 0
    assert "max_steps: 12" in capsys.readouterr().out
    capped = [record.message for record in caplog.records if "capped" in record.message]
    assert capped == ["SLIM_MAX_STEPS=12 capped train.max_steps 100 -> 12 (warmup_steps 10 -> 1, val_every 100 -> 6)"]
