"""Every family compresses (issues 14, 26): OLMoE, Mixtral, DeepSeek-V3 and GLM-4.5 students from every reducer and
depth selector, with width cuts where the family's heads allow them (refused in one line otherwise), reload in plain
transformers.
Qwen3-Next and Qwen3-MoE: tests/test_compress.py and tests/test_portable.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from slim.harness.compression.compress import compress
from slim.harness.compression.modeling_slim import expert_count
from slim.harness.errors import UserError
from slim.harness.models.io import load_pretrained
from tests.tiny_families import Teacher, make_teacher

FAMILIES = ("olmoe", "mixtral", "deepseek_v3", "glm4_moe", "qwen3_5_moe_text", "gpt_oss")
# OLMoE sizes its q/k norms by the width; every other family takes a width cut.
WIDTH_CUTS = ("mixtral", "deepseek_v3", "glm4_moe", "qwen3_5_moe_text", "gpt_oss")
# Each reducer once with each depth selector.
CUTS = [("prune", "last_n"), ("merge", "act_sim"), ("partial_preserve", "block_influence")]
IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Teacher]:
    root = tmp_path_factory.mktemp("families")
    return {family: make_teacher(root, family, tokenizer_dir) for family in FAMILIES}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("reducer", "selector"), CUTS)
def test_every_reducer_and_depth_cut_gives_a_student_plain_transformers_loads(teachers, tmp_path, family, reducer,
                                                                              selector):
    """4 -> 3 layers, 8 -> 4 experts and, where the family allows it, width 64 -> 48: plain AutoModelForCausalLM
    loads the student with the harness's logits."""
    width = ["compress.width.hidden_size=48"] if family in WIDTH_CUTS else []
    output = tmp_path / "student"
    compress(teachers[family].recipe(output, "compress.depth.num_drop=1", f"compress.depth.selector={selector}",
                                     "compress.experts.num_experts=4", f"compress.experts.reducer={reducer}", *width))
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == family and config["num_hidden_layers"] == 3
    assert config["hidden_size"] == (48 if width else 64)
    student, _ = load_pretrained(output)
    plain = AutoModelForCausalLM.from_pretrained(output).eval()
    for tensor in plain.parameters():  # out of the safetensors memory map, as load_pretrained does
        tensor.data = tensor.data.clone()
    assert type(plain) is type(student) and expert_count(plain.config) == 4
    assert torch.equal(_logits(plain), _logits(student.eval()))


def test_olmoe_width_cut_is_refused_in_one_line_before_any_work(teachers, tmp_path):
    """OLMoE sizes its q/k norms by the width: a width target is one line naming the field, nothing is written."""
    with pytest.raises(UserError) as error:
        compress(teachers["olmoe"].recipe(tmp_path / "student", "compress.width.hidden_size=48"))
    assert str(error.value).startswith("compress.width.hidden_size: width pruning is not supported for family "
                                       "'olmoe'") and "\n" not in str(error.value)
    assert not (tmp_path / "student").exists()
