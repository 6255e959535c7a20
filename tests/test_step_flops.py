"""The FLOP count of a distillation step (issue 27) against torch's own FLOP counter, and `slim plan`'s time-to-train
line from a measured rate."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from slim.harness.config.load import load_config
from slim.harness.models.build import build_model
from slim.harness.step_flops import format_duration, forward_flops
from slim.harness.time_to_train import time_to_train_line
from tests.conftest import TINY_OVERRIDES
from tests.tiny_families import FAMILY_SHAPE, SHAPE

SEQ = 32


def test_the_forward_count_is_what_torch_counts_on_a_full_attention_model():
    """A tiny Qwen3-MoE with eager attention and experts: torch counts every matmul, the attention scores over the
    full square; the harness counts the causal half. Apart from that, the two agree within the norms' share (<1%)."""
    cfg = load_config([*TINY_OVERRIDES, *SHAPE, "model.family=qwen3_moe", *FAMILY_SHAPE["qwen3_moe"]]).model
    model = build_model(cfg).eval()
    model.set_attn_implementation("eager")
    model.set_experts_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, cfg.vocab_size, (1, SEQ)), use_cache=False)
    square_scores = cfg.num_hidden_layers * 4 * cfg.num_attention_heads * cfg.head_dim * SEQ * SEQ
    causal_scores = cfg.num_hidden_layers * 4 * cfg.num_attention_heads * cfg.head_dim * SEQ * (SEQ + 1) / 2
    counted = (counter.get_total_flops() - square_scores) / SEQ
    ours = (forward_flops(cfg, SEQ, with_mtp=False) - causal_scores / SEQ)
    assert abs(ours - counted) / counted < 0.01, (ours, counted)


def _measurement(directory: Path, name: str, device: str, flop_per_s: float) -> None:
    directory.mkdir(exist_ok=True)
    record = {"device": device, "precision": "bf16-mixed", "achieved_flop_per_s": {"median": flop_per_s}}
    (directory / name).write_text(json.dumps(record))


def test_the_time_to_train_line_uses_a_gpu_rate_first_and_names_its_file(tmp_path):
    cfg = load_config(["model=qwen3-next-80b-a3b", "plan.gpus=8", "plan.nodes=2"],
                      files=["conf/recipes/qwen3-next-23a2b-120b.yaml"])
    assert "no step measurement" in time_to_train_line(cfg, tmp_path)
    per_token = 22_402_775_936  # the 23A2B step's FLOPs per token (slim.harness.step_flops), 4096-token sequences
    _measurement(tmp_path, "distill_scale.json", "cpu", per_token * 10)
    cpu = time_to_train_line(cfg, tmp_path)
    assert "at 10 tokens/s each" in cpu and "no GPU measurement yet" in cpu and "distill_scale.json" in cpu
    _measurement(tmp_path, "distill_scale_cuda.json", "NVIDIA H100", per_token * 5000)
    gpu = time_to_train_line(cfg, tmp_path)
    budget = 512 * 57221 * 4096  # the recipe's train.batch_size x train.max_steps x data.seq_len
    assert gpu == (f"time to train 120.0B tokens: {format_duration(budget / (5000 * 16))} on 16 devices at 5,000 "
                   "tokens/s each (the FLOP rate of distill_scale_cuda.json: NVIDIA H100, bf16-mixed)")
    assert format_duration(budget / (5000 * 16)) == "17.4 days"
