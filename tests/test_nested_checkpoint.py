"""A teacher released inside a multimodal checkpoint (issue 26: Qwen3.5-MoE): the harness reads its language model,
compresses it, and writes the student back in the same layout with the vision tower unchanged; plain transformers
loads that student as the multimodal model and as a causal LM with the harness's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

from slim.harness.calibration.io import save_stats
from slim.harness.calibration.run import run_calibration
from slim.harness.compression.compress import compress
from slim.harness.compression.experts import reduce_experts
from slim.harness.compression.plan import ExpertGroup, ExpertPlan
from slim.harness.config.load import load_config
from slim.harness.data.packing import build_corpus_data
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.nested import NESTED_SOURCE
from tests.conftest import TINY_OVERRIDES
from tests.tiny_families import CALIBRATION

IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))
TEXT = {"vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
        "linear_key_head_dim": 16, "linear_value_head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
        "layer_types": ["linear_attention", "full_attention"] * 2}
VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
          "patch_size": 4, "temporal_patch_size": 2, "spatial_merge_size": 2}
RECIPE = ["compress.depth.num_drop=1", "compress.experts.num_experts=4", "compress.experts.reducer=merge"]


def _tensors(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    found = {}
    for file in directory.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            found.update({key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)})
    return found


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> tuple[Path, Path, list[str]]:
    """A tiny multimodal Qwen3.5-MoE checkpoint, the calibration stats of its language model and the overrides."""
    root = tmp_path_factory.mktemp("nested")
    torch.manual_seed(0)
    model = Qwen3_5MoeForConditionalGeneration(Qwen3_5MoeConfig(text_config=TEXT, vision_config=VISION))
    overrides = [*TINY_OVERRIDES, *CALIBRATION, f"data.tokenizer={tokenizer_dir}"]
    cfg = load_config(overrides)
    model.save_pretrained(root / "teacher")
    build_corpus_data(cfg.data).tokenizer.save_pretrained(root / "teacher")
    language_model, _ = load_pretrained(root / "teacher")
    save_stats(run_calibration(language_model, cfg.data, cfg.calibration), root / "stats.safetensors")
    return root / "teacher", root / "stats.safetensors", overrides


def _compress(teacher: tuple[Path, Path, list[str]], output: Path, *recipe: str) -> torch.nn.Module:
    directory, stats, overrides = teacher
    compress(load_config([*overrides, f"compress.teacher={directory}", f"compress.stats={stats}",
                          f"compress.output={output}", *recipe]))
    student, _ = load_pretrained(output)
    return student.eval()


def test_the_harness_reads_the_language_model_with_the_multimodal_models_logits(teacher):
    directory = teacher[0]
    language_model, _ = load_pretrained(directory)
    assert language_model.config.model_type == "qwen3_5_moe_text"
    assert getattr(language_model.config, NESTED_SOURCE) == str(directory.resolve())
    multimodal = Qwen3_5MoeForConditionalGeneration.from_pretrained(directory).eval()
    for tensor in multimodal.parameters():  # out of the memory map, as the harness's copy is
        tensor.data = tensor.data.clone()
    assert torch.equal(_logits(multimodal), _logits(language_model.eval()))


def test_the_student_is_written_in_the_teachers_layout_with_the_tower_unchanged(teacher, tmp_path):
    student = _compress(teacher, tmp_path / "student", *RECIPE)
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["model_type"] == "qwen3_5_moe" and config["vision_config"]["depth"] == 1
    assert config["text_config"]["num_hidden_layers"] == 3 and config["text_config"]["num_experts"] == 4
    assert NESTED_SOURCE not in config["text_config"]
    tower, written = _tensors(teacher[0], "model.visual."), _tensors(tmp_path / "student", "model.visual.")
    assert tower and tower.keys() == written.keys()
    assert all(torch.equal(tower[key], written[key]) for key in tower)
    assert not _tensors(tmp_path / "student", "model.layers.")  # the language model sits under its prefix

    multimodal, info = Qwen3_5MoeForConditionalGeneration.from_pretrained(tmp_path / "student",
                                                                           output_loading_info=True)
    assert not any(info.values()), info
    causal = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    for model in (multimodal, causal):
        for tensor in model.parameters():
            tensor.data = tensor.data.clone()
        assert torch.equal(_logits(model.eval()), _logits(student))


def test_a_portable_student_is_written_as_its_language_model_alone_with_a_warning(teacher, tmp_path, capsys):
    """Layers that keep different expert counts make a portable student, which no multimodal class builds."""
    model, tokenizer = load_pretrained(teacher[0])
    reduce_experts(model, {0: ExpertPlan([ExpertGroup.single(expert) for expert in range(4)], 8)})
    save_pretrained(model, tmp_path / "student", tokenizer=tokenizer)
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["model_type"] == "slim_qwen3_5_moe_text" and "text_config" not in config
    assert NESTED_SOURCE not in config and not _tensors(tmp_path / "student", "model.visual.")
    assert "vision tower" in capsys.readouterr().err
    reloaded, _ = load_pretrained(tmp_path / "student")
    assert torch.equal(_logits(reloaded.eval()), _logits(model.eval()))
