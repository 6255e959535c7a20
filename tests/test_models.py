"""Model adapters, build/validation, save/load, parameter counts and the CPU linear-attention path."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from slim.harness.errors import UserError
from slim.harness.models.build import build_model, validate_model_config
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.linear_attention_path import linear_attention_backend
from slim.harness.models.params import count_parameters, format_count
from slim.harness.models.view import view
from tests.fixtures.model_configs import FAMILIES, load_model_config, tiny_model_config, token_ids

REPO = Path(__file__).resolve().parents[1]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    text = ["in the beginning god created the heaven and the earth"] * 3
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=64, special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>")


@pytest.mark.parametrize("family", FAMILIES)
def test_view_tensors_are_the_model_parameters(family: str) -> None:
    """Every view tensor is the very Parameter object named in model.named_parameters()."""
    model = build_model(tiny_model_config(family))
    params = dict(model.named_parameters())
    model_view = view(model)
    assert model_view.embed_tokens.weight is params["model.embed_tokens.weight"]
    assert model_view.lm_head.weight is params["lm_head.weight"]
    assert model_view.final_norm.weight is params["model.norm.weight"]
    for layer in model_view.layers:
        moe = layer.moe
        assert moe.router is params[f"{layer.name}.mlp.gate.weight"]
        assert moe.gate_up_proj is params[f"{layer.name}.mlp.experts.gate_up_proj"]
        assert moe.down_proj is params[f"{layer.name}.mlp.experts.down_proj"]
        assert layer.input_norm.weight is params[f"{layer.name}.input_layernorm.weight"]
        assert layer.post_attention_norm.weight is params[f"{layer.name}.post_attention_layernorm.weight"]
        if family == "qwen3_next":
            assert moe.shared_expert.up_proj.weight is params[f"{layer.name}.mlp.shared_expert.up_proj.weight"]
            assert moe.shared_expert_gate.weight is params[f"{layer.name}.mlp.shared_expert_gate.weight"]
        else:
            assert moe.shared_expert is None


@pytest.mark.parametrize("family", FAMILIES)
def test_moe_view_reproduces_block_forward(family: str) -> None:
    """route + per-expert loop + shared expert from the view equals the MoE block's own forward."""
    model = build_model(tiny_model_config(family))
    x = torch.randn(2, 7, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    for layer in view(model).moe_layers():
        moe = layer.moe
        with torch.no_grad():  # unit-scale outputs and a spread router, so a routing mistake shows
            moe.router.normal_(std=0.3)
            moe.gate_up_proj.normal_(std=moe.gate_up_proj.shape[-1] ** -0.5)
            moe.down_proj.normal_(std=moe.down_proj.shape[-1] ** -0.5)
            expected = moe.module(x)
            expected = expected[0] if isinstance(expected, tuple) else expected
            assert expected.abs().mean() > 0.1
            torch.testing.assert_close(moe.forward(x), expected, atol=1e-6, rtol=1e-5)
            moe.norm_topk_prob = not moe.norm_topk_prob
            assert not torch.allclose(moe.forward(x), expected, atol=1e-3)


def test_norms_cover_every_rmsnorm() -> None:
    """all_norms() lists exactly the model's RMSNorm modules, incl. q/k norms and the gated DeltaNet norm."""
    model = build_model(tiny_model_config())
    expected = {name for name, module in model.named_modules() if "RMSNorm" in type(module).__name__}
    names = [name for name, _ in view(model).all_norms()]
    assert len(names) == len(set(names)) and set(names) == expected
    assert "model.layers.0.linear_attn.norm" in expected and "model.layers.3.self_attn.q_norm" in expected


def test_layer_kinds_follow_full_attention_interval() -> None:
    """Layer i is full attention iff (i + 1) % full_attention_interval == 0; the mixer matches the kind."""
    model = build_model(tiny_model_config(num_hidden_layers=8, full_attention_interval=4))
    layers = view(model).layers
    assert [layer.kind for layer in layers] == (["linear_attention"] * 3 + ["full_attention"]) * 2
    for layer in layers:
        expected_mixer = layer.module.self_attn if layer.kind == "full_attention" else layer.module.linear_attn
        assert layer.mixer is expected_mixer


def test_save_reload_gives_identical_logits_and_config(tmp_path: Path) -> None:
    """save -> reload: bit-identical logits, same config (MTP depth as mtp_num_hidden_layers), same tokenizer."""
    cfg = tiny_model_config(mtp_num_layers=2)
    model = build_model(cfg).eval()
    out_dir = tmp_path / "student"
    save_pretrained(model, out_dir, tiny_tokenizer())
    save_pretrained(model, out_dir, tiny_tokenizer(), extras=lambda d: (d / "note.txt").write_text("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no tmp/old directories left
    assert (out_dir / "note.txt").is_file()
    loaded, tokenizer = load_pretrained(out_dir)
    ids = token_ids(cfg)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    expected = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    assert {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"} == expected
    assert loaded.config.mtp_num_hidden_layers == 2
    assert tokenizer("in the beginning").input_ids == tiny_tokenizer()("in the beginning").input_ids


def test_saved_files_take_the_umask_not_owner_only(tmp_path: Path) -> None:
    """Weights, the MTP file an extra writes and the rest are 0666 minus the umask (safetensors alone writes 0600,
    which other users of a shared checkpoint cannot read)."""
    from slim.harness.atomic import save_safetensors_atomic

    umask = os.umask(0o027)
    try:
        def extra(directory: Path) -> None:
            save_safetensors_atomic({"w": torch.ones(2)}, directory / "extra.safetensors", metadata={})

        out_dir = save_pretrained(build_model(tiny_model_config()), tmp_path / "student", tiny_tokenizer(),
                                  extras=extra)
    finally:
        os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in out_dir.iterdir() if path.is_file()}
    assert {"model.safetensors", "extra.safetensors", "config.json"} <= modes.keys()
    assert set(modes.values()) == {0o640}, modes


def test_real_config_parameter_counts() -> None:
    """The real Qwen3-Next-80B-A3B preset builds on meta: ~79.7B total, ~3.9B active (SlimQwen's numbers)."""
    cfg = load_model_config("qwen3-next-80b-a3b")
    count = count_parameters(build_model(cfg, device="meta", dtype=torch.bfloat16))
    print(f"Qwen3-Next-80B-A3B: total {count.total} ({format_count(count.total)}), "
          f"active {count.active} ({format_count(count.active)})")
    assert abs(count.total - 79.7e9) / 79.7e9 < 0.01
    assert abs(count.active - 3.9e9) / 3.9e9 < 0.03
    assert count.lm_head == count.embedding == cfg.vocab_size * cfg.hidden_size
    assert format_count(count.total) == "79.7B" and format_count(count.active) == "3.9B"


FAKE_KERNEL = 'def {name}(*args, **kwargs):\n    raise RuntimeError("0 active drivers ([]).")\n'

FAKE_FLA_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)  # as in the test process (conftest), so the logits compare bit for bit
    from transformers import AutoModelForCausalLM
    from slim.harness.models.build import build_hf_config
    from slim.harness.models.linear_attention_path import install_device_dispatch, linear_attention_backend
    from tests.fixtures.model_configs import tiny_model_config, token_ids

    cfg = tiny_model_config()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_hf_config(cfg)).eval()
    ids = token_ids(cfg)
    import importlib
    from slim.harness.models.linear_attention_path import PATCHED_MODULES, dispatches_by_device
    print("DISPATCHES ITSELF", dispatches_by_device(importlib.import_module(PATCHED_MODULES[0]).causal_conv1d_fn))
    try:
        model(ids)
        print("UNPATCHED ok")
    except RuntimeError as error:
        print("UNPATCHED failed:", error)
    install_device_dispatch()
    install_device_dispatch()
    print("BACKEND", linear_attention_backend("cpu"), linear_attention_backend("cuda"))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=3, do_sample=False)  # cached decode: recurrent kernels
        torch.save({"logits": model(ids).logits, "generated": generated}, sys.argv[1])
    """
)


@pytest.mark.skipif(importlib.util.find_spec("fla") is not None,
                    reason="real flash-linear-attention installed: "
                           "test_cpu_forward_with_real_triton_installed covers it")
def test_cpu_path_survives_importable_fake_fla(tmp_path: Path) -> None:
    """With fake fla/causal_conv1d importable, CPU forward fails unpatched where transformers does not dispatch by
    device itself, and equals the torch path once dispatched."""
    fake = tmp_path / "fake"
    for package, names in {
        "fla/ops/gated_delta_rule": ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"),
        "causal_conv1d": ("causal_conv1d_fn", "causal_conv1d_update"),
    }.items():
        parts = package.split("/")
        for depth in range(1, len(parts) + 1):
            (fake.joinpath(*parts[:depth])).mkdir(parents=True, exist_ok=True)
            (fake.joinpath(*parts[:depth]) / "__init__.py").touch()
        (fake.joinpath(*parts) / "__init__.py").write_text("".join(FAKE_KERNEL.format(name=n) for n in names))
    result_file = tmp_path / "result.pt"
    python_path = [str(fake), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    run = subprocess.run(
        [sys.executable, "-c", FAKE_FLA_SCRIPT, str(result_file)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # transformers 5.25 on sends CPU tensors to torch itself; older ones call the (fake) kernel
    expected = "UNPATCHED ok" if "DISPATCHES ITSELF True" in run.stdout else "UNPATCHED failed: 0 active drivers"
    assert expected in run.stdout
    assert "BACKEND torch fla" in run.stdout
    result = torch.load(result_file)
    cfg = tiny_model_config()
    model = build_model(cfg, seed=0).eval()
    ids = token_ids(cfg)
    with torch.no_grad():
        assert torch.equal(result["logits"], model(ids).logits)
        assert torch.equal(result["generated"], model.generate(ids, max_new_tokens=3, do_sample=False))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (GPU extra) installed")
def test_cpu_forward_with_real_triton_installed() -> None:
    """With the real triton/fla installed, the tiny model still runs on CPU through the torch path."""
    cfg = tiny_model_config()
    model = build_model(cfg).eval()
    with torch.no_grad():
        assert torch.isfinite(model(token_ids(cfg)).logits).all()
    assert linear_attention_backend("cpu") == "torch"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"family": "qwen4"}, "model.family"),
        ({"num_experts_per_tok": 17}, "model.num_experts_per_tok"),
        ({"num_experts_per_tok": 0}, "model.num_experts_per_tok"),
        ({"hidden_size": 0}, "model.hidden_size"),
        ({"num_key_value_heads": 3}, "model.num_key_value_heads"),
        ({"linear_num_value_heads": 5}, "model.linear_num_value_heads"),
        ({"head_dim": 36}, "model.head_dim"),  # rotary part 36 * 0.25 = 9 is odd
        ({"family": "qwen3_moe"}, "model.shared_expert_intermediate_size"),
        ({"family": "olmoe", "shared_expert_intermediate_size": 0, "partial_rotary_factor": 1.0, "head_dim": 16},
         "model.head_dim"),
        ({"family": "mixtral", "shared_expert_intermediate_size": 0, "partial_rotary_factor": 1.0,
          "norm_topk_prob": False}, "model.norm_topk_prob"),
    ],
)
def test_bad_model_config_names_the_field(overrides: dict, field: str) -> None:
    """Invalid model configs fail before any work with one line naming the field and the allowed values."""
    cfg = dataclasses.replace(load_model_config("tiny"), **overrides)
    with pytest.raises(UserError, match="allowed|valid") as error:
        validate_model_config(cfg)
    message = str(error.value)
    assert message.startswith(field) and "\n" not in message
    with pytest.raises(UserError):
        build_model(cfg)


def test_conf_model_presets_validate() -> None:
    """Every conf/model/*.yaml loads into ModelConfig and passes validation."""
    for path in sorted((REPO / "conf/model").glob("*.yaml")):
        validate_model_config(load_model_config(path.stem))


@pytest.fixture
def saved_dir(tmp_path: Path) -> Path:
    return save_pretrained(build_model(tiny_model_config()), tmp_path / "ckpt")


def test_bad_checkpoint_dirs_name_the_path(tmp_path: Path, saved_dir: Path) -> None:
    """Missing dir, dir without config.json, unsupported model_type: one-line UserError naming the path."""
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'}: no such directory"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no config.json"):
        load_pretrained(tmp_path / "empty")
    config = saved_dir / "config.json"
    config.write_text(config.read_text().replace('"qwen3_next"', '"llama"'))
    with pytest.raises(UserError, match=f"{config} model_type: unknown model family 'llama'"):
        load_pretrained(saved_dir)


def test_corrupt_weights_name_the_file(saved_dir: Path) -> None:
    """A truncated model.safetensors fails with a UserError naming the file."""
    weights = saved_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match=f"{weights}: unreadable weights"):
        load_pretrained(saved_dir)


def test_missing_tensor_is_an_error_not_a_random_init(saved_dir: Path) -> None:
    """A checkpoint lacking a weight fails loudly instead of transformers' silent re-initialization."""
    weights = saved_dir / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.0.mlp.gate.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(UserError, match="missing_keys.*model.layers.0.mlp.gate.weight"):
        load_pretrained(saved_dir)
