"""Tiny random-init teachers of every model family, saved with the corpus tokenizer and their calibration stats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slim.harness.calibration.io import save_stats
from slim.harness.calibration.run import run_calibration
from slim.harness.config.load import load_config
from slim.harness.config.schema import SlimConfig
from slim.harness.data.packing import build_corpus_data
from slim.harness.models.build import build_model
from slim.harness.models.io import save_pretrained
from tests.conftest import TINY_OVERRIDES

# 4 layers, hidden 64, 8 experts top-2, no MTP module; qwen3_next's layer 3 is its full-attention layer.
SHAPE = ["model.num_hidden_layers=4", "model.hidden_size=64", "model.num_experts=8", "model.num_experts_per_tok=2",
         "model.moe_intermediate_size=32", "model.mtp_num_layers=0"]
# Fields a family without a shared expert or partial RoPE must leave neutral.
PLAIN_MOE = ["model.shared_expert_intermediate_size=0", "model.partial_rotary_factor=1.0"]
GROUPED = ["model.shared_expert_intermediate_size=32", "model.n_group=2", "model.topk_group=1",
           "model.routed_scaling_factor=2.5", "model.first_k_dense_replace=1"]
FAMILY_SHAPE = {
    "qwen3_next": ["model.shared_expert_intermediate_size=64"],
    "qwen3_5_moe_text": ["model.shared_expert_intermediate_size=64", "model.full_attention_interval=2"],
    "qwen3_moe": PLAIN_MOE,
    "olmoe": [*PLAIN_MOE, "model.head_dim=16"],  # OLMoE: head_dim = hidden_size / num_attention_heads
    "mixtral": PLAIN_MOE,
    # Group-limited routing: 8 experts in 2 groups, the best group only; layer 0 dense; one shared expert.
    # MLA sizes in whole 32-blocks where FP8 scales them (tests/test_quantized_release.py).
    "deepseek_v3": [*GROUPED, "model.partial_rotary_factor=1.0", "model.kv_lora_rank=32", "model.q_lora_rank=24",
                    "model.head_dim=64", "model.qk_rope_head_dim=32", "model.v_head_dim=32",
                    "model.num_key_value_heads=4"],
    "glm4_moe": [*GROUPED, "model.partial_rotary_factor=0.5"],
    "gpt_oss": PLAIN_MOE,
}
CALIBRATION = ["calibration.num_samples=16", "calibration.batch_size=8", "calibration.probe_tokens=128"]


@dataclass(frozen=True)
class Teacher:
    """A saved tiny teacher, its calibration stats and the overrides that describe it."""

    family: str
    directory: Path
    stats: Path
    overrides: list[str]

    def recipe(self, output: Path, *overrides: str) -> SlimConfig:
        """The config that compresses this teacher into `output` with the recipe `overrides`."""
        return load_config([*self.overrides, f"compress.teacher={self.directory}", f"compress.stats={self.stats}",
                            f"compress.output={output}", *overrides])


def make_teacher(root: Path, family: str, tokenizer_dir: Path, seed: int = 0) -> Teacher:
    """Build, save and calibrate a tiny `family` teacher under `root`."""
    overrides = [*TINY_OVERRIDES, *SHAPE, f"model.family={family}", *FAMILY_SHAPE[family], *CALIBRATION,
                 f"data.tokenizer={tokenizer_dir}"]
    cfg = load_config(overrides)
    model = build_model(cfg.model, seed=seed)
    directory = save_pretrained(model, root / f"{family}-teacher", tokenizer=build_corpus_data(cfg.data).tokenizer)
    stats = root / f"{family}-stats.safetensors"
    save_stats(run_calibration(model, cfg.data, cfg.calibration), stats)
    return Teacher(family, directory, stats, overrides)
