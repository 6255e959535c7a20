"""Quantized releases (issue 26): a DeepSeek-V3 teacher stored as FP8 with block scales and a gpt-oss teacher with MXFP4
experts load dequantized to bf16, equal to a hand-computed dequantization of what was written, compress into an
unquantized student that plain transformers loads; any other quantization is refused in one line before work.

transformers writes neither format on CPU (FP8 and MXFP4 quantization need a GPU kernel), so the tiny checkpoints are
written here by hand in the released layouts: FP8 `weight` + `weight_scale_inv` per block of 32x32, MXFP4
`*_blocks` (two e2m1 values per byte, low nibble first) + `*_scales` (e8m0 exponents) per 32 values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from slim.harness.calibration.io import save_stats
from slim.harness.calibration.run import run_calibration
from slim.harness.compression.compress import compress
from slim.harness.config.load import load_config
from slim.harness.data.packing import build_corpus_data
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained
from slim.harness.training.sharded_load import empty_with_mtp
from tests.conftest import TINY_OVERRIDES
from tests.tiny_families import CALIBRATION, FAMILY_SHAPE, SHAPE

BLOCK = 32
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))


def _save_teacher(family: str, directory: Path, tokenizer_dir: Path) -> list[str]:
    overrides = [*TINY_OVERRIDES, *SHAPE, f"model.family={family}", *FAMILY_SHAPE[family], *CALIBRATION,
                 f"data.tokenizer={tokenizer_dir}"]
    cfg = load_config(overrides)
    model = build_model(cfg.model, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    build_corpus_data(cfg.data).tokenizer.save_pretrained(directory)
    return overrides


def _add_quantization(directory: Path, quantization: dict) -> None:
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = quantization
    (directory / "config.json").write_text(json.dumps(config))


def _fp8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float8 weight, scale per 32x32 block, the dequantized weight in bf16), block by block."""
    rows, cols = weight.shape
    scales = torch.empty(math.ceil(rows / BLOCK), math.ceil(cols / BLOCK))
    stored = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    dequantized = torch.empty(rows, cols)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            block = (slice(i * BLOCK, (i + 1) * BLOCK), slice(j * BLOCK, (j + 1) * BLOCK))
            scales[i, j] = weight[block].float().abs().max() / 448
            stored[block] = (weight[block].float() / scales[i, j]).to(torch.float8_e4m3fn)
            dequantized[block] = stored[block].float() * scales[i, j]
    return stored, scales, dequantized.to(torch.bfloat16)


def _write_fp8(directory: Path) -> dict[str, torch.Tensor]:
    """Store every projection of `directory` (not embeddings, head, norms or routers) as FP8 with block scales, as
    DeepSeek-V3 is released; returns each stored tensor's expected dequantized value."""
    tensors, expected = {}, {}
    for key, tensor in load_file(directory / "model.safetensors").items():
        if tensor.dim() == 2 and key.endswith("proj.weight") or key.endswith("_proj_with_mqa.weight"):
            tensors[key], tensors[f"{key}_scale_inv"], expected[key] = _fp8_blocks(tensor)
        else:
            tensors[key] = tensor
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    _add_quantization(directory, {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [BLOCK, BLOCK]})
    return expected


def _mxfp4(rows: int, cols: int, experts: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """Random MXFP4 `blocks` [E, rows, cols/32, 16], `scales` [E, rows, cols/32] and their value [E, rows, cols]:
    value[e, r, 32 g + 2 b] = e2m1(low nibble of blocks[e, r, g, b]) * 2^(scales[e, r, g] - 127), the high nibble
    at 32 g + 2 b + 1."""
    blocks = torch.randint(0, 256, (experts, rows, cols // BLOCK, BLOCK // 2), generator=generator, dtype=torch.uint8)
    scales = torch.randint(120, 128, (experts, rows, cols // BLOCK), generator=generator, dtype=torch.uint8)
    table = torch.tensor(E2M1)
    values = torch.stack([table[(blocks & 0x0F).long()], table[(blocks >> 4).long()]], dim=-1)  # [E, r, g, 16, 2]
    values = values.reshape(experts, rows, cols // BLOCK, BLOCK) * 2.0 ** (scales.float() - 127)[..., None]
    return blocks, scales, values.reshape(experts, rows, cols)


def _write_mxfp4(directory: Path) -> dict[str, torch.Tensor]:
    """Store every layer's experts of a gpt-oss `directory` as MXFP4, as gpt-oss is released; returns each packed
    parameter's expected dequantized value in the model's layout (gate_up [E, d, 2I], down [E, I, d])."""
    tensors = load_file(directory / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    experts, hidden, width = config["num_local_experts"], config["hidden_size"], config["intermediate_size"]
    generator, expected = torch.Generator().manual_seed(3), {}
    for key in [key for key in tensors if key.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        rows, cols = (2 * width, hidden) if key.endswith("gate_up_proj") else (hidden, width)
        del tensors[key]
        tensors[f"{key}_blocks"], tensors[f"{key}_scales"], value = _mxfp4(rows, cols, experts, generator)
        expected[key] = value.transpose(1, 2).to(torch.bfloat16)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    _add_quantization(directory, {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})
    return expected


@pytest.fixture(scope="module")
def fp8_teacher(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> tuple[Path, list[str], dict]:
    directory = tmp_path_factory.mktemp("fp8") / "teacher"
    overrides = _save_teacher("deepseek_v3", directory, tokenizer_dir)
    return directory, overrides, _write_fp8(directory)


def test_an_fp8_release_loads_dequantized_as_written(fp8_teacher):
    directory, _, expected = fp8_teacher
    model, _ = load_pretrained(directory)
    state = model.state_dict()
    assert getattr(model.config, "quantization_config", None) is None
    attention = [key for key in expected if ".experts." not in key]
    assert attention and all(torch.equal(state[key], expected[key]) for key in attention)
    for layer in range(1, 4):  # the MoE layers: per-expert gate and up rows packed as gate_up_proj [E, 2I, d]
        prefix = f"model.layers.{layer}.mlp.experts"
        gate_up = torch.stack([torch.cat([expected[f"{prefix}.{e}.gate_proj.weight"],
                                          expected[f"{prefix}.{e}.up_proj.weight"]]) for e in range(8)])
        assert torch.equal(state[f"{prefix}.gate_up_proj"], gate_up)


def test_an_fp8_teacher_compresses_into_an_unquantized_student(fp8_teacher, tmp_path):
    directory, overrides, _ = fp8_teacher
    cfg = load_config(overrides)
    teacher, _ = load_pretrained(directory)
    save_stats(run_calibration(teacher, cfg.data, cfg.calibration), tmp_path / "stats.safetensors")
    stats = tmp_path / "stats.safetensors"
    compress(load_config([*overrides, f"compress.teacher={directory}", f"compress.stats={stats}",
                          f"compress.output={tmp_path / 'student'}", "compress.experts.num_experts=4"]))
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert "quantization_config" not in config and config["n_routed_experts"] == 4
    student, _ = load_pretrained(tmp_path / "student")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    for tensor in plain.parameters():  # out of the memory map, as the harness's copy is
        tensor.data = tensor.data.clone()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=IDS, use_cache=False).logits,
                           student.eval()(input_ids=IDS, use_cache=False).logits)


def test_mxfp4_experts_load_dequantized_as_written(tmp_path, tokenizer_dir):
    directory = tmp_path / "teacher"
    _save_teacher("gpt_oss", directory, tokenizer_dir)
    expected = _write_mxfp4(directory)
    model, _ = load_pretrained(directory)
    state = model.state_dict()
    assert expected and all(torch.equal(state[key], value) for key, value in expected.items())
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=IDS, use_cache=False).logits).all()


def test_other_quantizations_and_sharded_loads_are_refused_in_one_line(fp8_teacher, tmp_path, tokenizer_dir):
    directory = tmp_path / "teacher"
    overrides = _save_teacher("qwen3_moe", directory, tokenizer_dir)
    _add_quantization(directory, {"quant_method": "awq", "bits": 4})
    with pytest.raises(UserError) as error:
        compress(load_config([*overrides, f"compress.teacher={directory}", f"compress.output={tmp_path / 'out'}"]))
    assert str(error.value).startswith(f"compress.teacher: checkpoint {directory}: weights quantized with 'awq'")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="'fp8' are dequantized by the full load only"):
        empty_with_mtp(fp8_teacher[0], with_mtp=False)
