"""Calibration pass: every statistic against brute-force references, model left intact, layerwise == full, I/O."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slim.harness.calibration import moe_stats
from slim.harness.calibration.collect import calibrate
from slim.harness.calibration.fingerprint import model_fingerprint
from slim.harness.calibration.instrument import StatsCollector
from slim.harness.calibration.io import check_fingerprint, load_stats, save_stats
from slim.harness.calibration.layerwise import calibrate_layerwise
from slim.harness.calibration.run import calibration_batches, run_calibration
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.config.load import load_config
from slim.harness.config.schema import CalibrationConfig, ModelConfig
from slim.harness.data.packing import PackedDataset
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.view import MoEView, view
from slim.kernels.grouped_experts import expert_outputs_grouped, expert_outputs_loop

PROBE_TOKENS = 40  # more than one batch (2 x 16 tokens), so the probe set spans batches
CALIBRATION = CalibrationConfig(probe_tokens=PROBE_TOKENS, batch_size=2)


def small_config(family: str = "qwen3_next", **overrides: object) -> ModelConfig:
    """hidden 64, 4 layers (qwen3_next: 3 Gated DeltaNet + 1 full attention), 8 experts top-2, vocab 256."""
    cfg = ModelConfig(family=family, vocab_size=256, hidden_size=64, num_hidden_layers=4, head_dim=16,
                      linear_key_head_dim=16, linear_value_head_dim=16, num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=32, shared_expert_intermediate_size=32)
    if family != "qwen3_next":
        cfg = dataclasses.replace(cfg, shared_expert_intermediate_size=0, partial_rotary_factor=1.0)
    return dataclasses.replace(cfg, **overrides)


def small_model(family: str = "qwen3_next", **overrides: object) -> nn.Module:
    """Random weights, norm scales randomized too so every norm's weight shows in its output."""
    model = build_model(small_config(family, **overrides), seed=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return model


def make_batches(vocab_size: int = 256, num_batches: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randint(0, vocab_size, (2, 16), generator=generator) for _ in range(num_batches)]


@contextmanager
def final_norm_removed(model: nn.Module):
    """output_hidden_states' last entry is the final-norm output; without the norm it is the last layer's."""
    norm = model.model.norm
    model.model.norm = nn.Identity()
    try:
        yield norm
    finally:
        model.model.norm = norm


@torch.no_grad()
def plain_pass(model: nn.Module, batches: list[torch.Tensor]) -> tuple[list[tuple[torch.Tensor, ...]], dict]:
    """Per batch: hidden states h[0..L] (h[l] = layer l's input, h[L] = last layer's raw output), and per MoE
    layer the block inputs of all batches [T, d], captured by a plain forward (no calibration code)."""
    moe_inputs: dict[int, list[torch.Tensor]] = {}
    handles = [layer.moe.module.register_forward_pre_hook(
        lambda module, args, index=layer.index: moe_inputs.setdefault(index, []).append(args[0].reshape(-1, 64)))
        for layer in view(model).moe_layers()]
    with final_norm_removed(model):
        hidden = [model(ids, output_hidden_states=True, use_cache=False).hidden_states for ids in batches]
    for handle in handles:
        handle.remove()
    return hidden, {index: torch.cat(inputs) for index, inputs in moe_inputs.items()}


@torch.no_grad()
def per_token_moe_reference(moe: MoEView, tokens: torch.Tensor, probe_tokens: int) -> dict[str, torch.Tensor]:
    """The MoELayerStats sums by an explicit loop: each token routed alone, each selected expert run alone."""
    num_experts, hidden_size = moe.num_experts, tokens.shape[1]
    ref = {name: torch.zeros(num_experts, dtype=torch.float64) for name in ("freq", "soft", "reap", "ean")}
    ref["logit_gram"] = torch.zeros(num_experts, num_experts, dtype=torch.float64)
    ref["probe_output_sum"] = torch.zeros(num_experts, hidden_size, dtype=torch.float64)
    for position, x in enumerate(tokens):
        logits, weights, ids = moe.route(x[None])
        probs = torch.softmax(logits[0].double(), dim=-1)
        selected = ids[0].tolist()
        for slot, expert in enumerate(selected):
            norm = moe.expert_forward(expert, x[None])[0].double().norm()
            ref["freq"][expert] += 1
            ref["soft"][expert] += probs[expert] / probs[selected].sum()
            ref["reap"][expert] += weights[0, slot].double() * norm
            ref["ean"][expert] += norm
        ref["logit_gram"] += torch.outer(logits[0].double(), logits[0].double())
        if position < probe_tokens:
            for expert in range(num_experts):
                ref["probe_output_sum"][expert] += moe.expert_forward(expert, x[None])[0].double()
    return ref


@pytest.fixture(scope="module", params=["qwen3_next", "qwen3_moe"])
def calibrated(request: pytest.FixtureRequest) -> tuple[nn.Module, list[torch.Tensor], CalibrationStats]:
    """qwen3_moe without top-k renormalization, so the applied gate g differs from eq 6's normalized z."""
    model = small_model(request.param, norm_topk_prob=request.param == "qwen3_next")
    batches = make_batches()
    return model, batches, calibrate(model, batches, CALIBRATION)


def test_moe_statistics_equal_per_token_reference(calibrated) -> None:
    """freq, soft, reap, ean, logit_gram, probe sums and counts equal an explicit per-token, per-expert loop."""
    model, batches, stats = calibrated
    _, moe_inputs = plain_pass(model, batches)
    assert sorted(stats.moe) == [layer.index for layer in view(model).moe_layers()]
    for layer in view(model).moe_layers():
        got = stats.moe[layer.index]
        assert (got.num_tokens, got.probe_tokens) == (64, PROBE_TOKENS)
        for name, expected in per_token_moe_reference(layer.moe, moe_inputs[layer.index], PROBE_TOKENS).items():
            torch.testing.assert_close(getattr(got, name), expected, rtol=1e-5, atol=1e-7, msg=name)
        assert got.freq.sum() == 64 * 2


def test_more_experts_than_hidden_dims_equal_per_token_reference() -> None:
    """E = 80 > d = 64, where the logit Gram comes from the input Gram through the router: every sum still
    equals the per-token loop."""
    model = small_model(num_experts=80, num_experts_per_tok=8)
    batches = make_batches()
    stats = calibrate(model, batches, CALIBRATION)
    _, moe_inputs = plain_pass(model, batches)
    for layer in view(model).moe_layers():
        for name, expected in per_token_moe_reference(layer.moe, moe_inputs[layer.index], PROBE_TOKENS).items():
            torch.testing.assert_close(getattr(stats.moe[layer.index], name), expected, rtol=1e-5, atol=1e-7,
                                       msg=name)


def test_probe_sums_in_expert_chunks_equal_expert_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched probe, split into chunks of 3 experts, equals summing MoEView.expert_forward per expert."""
    moe = view(small_model()).layers[0].moe
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(moe_stats, "PROBE_CHUNK_VALUES", 3 * 5 * 64)  # 3 experts x 5 tokens x 2I = 64
    expected = torch.stack([moe.expert_forward(expert, x).double().sum(0) for expert in range(moe.num_experts)])
    with torch.no_grad():
        torch.testing.assert_close(moe_stats.all_expert_output_sums(moe, x), expected, rtol=1e-5, atol=1e-7)


def test_norm_statistics_equal_norms_of_hidden_states(calibrated) -> None:
    """Exactly the residual-width norms are recorded; sum |out| per dim equals the norms applied to the
    plain forward's hidden states (input norm, final norm) and the MoE inputs (post-attention norm)."""
    model, batches, stats = calibrated
    hidden, moe_inputs = plain_pass(model, batches)
    expected: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer in view(model).layers:
            inputs = torch.cat([h[layer.index] for h in hidden]).reshape(-1, 64)
            expected[f"{layer.name}.input_layernorm"] = layer.input_norm(inputs)
            expected[f"{layer.name}.post_attention_layernorm"] = moe_inputs[layer.index]
        expected["model.norm"] = model.model.norm(torch.cat([h[-1] for h in hidden]).reshape(-1, 64))
    assert stats.norm_abs_sum.keys() == expected.keys() == stats.norm_tokens.keys()
    for name, outputs in expected.items():
        torch.testing.assert_close(stats.norm_abs_sum[name], outputs.double().abs().sum(0), rtol=1e-5, atol=1e-6)
        assert stats.norm_tokens[name] == 64


def test_depth_statistics_equal_hidden_state_cosines(calibrated) -> None:
    """token_cos_sum / pooled_cos_sum equal cosines between output_hidden_states l and l+1 (raw last layer)."""
    model, batches, stats = calibrated
    hidden, _ = plain_pass(model, batches)
    num_layers = len(view(model).layers)
    token_cos = torch.zeros(num_layers, dtype=torch.float64)
    pooled_cos = torch.zeros(num_layers, dtype=torch.float64)
    for states in hidden:
        for index in range(num_layers):
            h_in, h_out = states[index].double(), states[index + 1].double()
            token_cos[index] += F.cosine_similarity(h_in, h_out, dim=-1).sum()
            pooled_cos[index] += F.cosine_similarity(h_in.mean(1), h_out.mean(1), dim=-1).sum()
    assert (stats.depth.num_tokens, stats.depth.num_sequences, stats.num_layers) == (64, 4, num_layers)
    torch.testing.assert_close(stats.depth.token_cos_sum, token_cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.depth.pooled_cos_sum, pooled_cos, rtol=1e-5, atol=1e-6)


def assert_stats_close(got: CalibrationStats, expected: CalibrationStats, rtol: float = 0.0, atol: float = 0.0) -> None:
    assert (got.fingerprint, got.num_layers, got.norm_tokens) == (expected.fingerprint, expected.num_layers,
                                                                 expected.norm_tokens)
    assert got.moe.keys() == expected.moe.keys() and got.norm_abs_sum.keys() == expected.norm_abs_sum.keys()
    for index, moe in expected.moe.items():
        for field in dataclasses.fields(moe):
            torch.testing.assert_close(getattr(got.moe[index], field.name), getattr(moe, field.name), rtol=rtol,
                                       atol=atol, msg=f"moe.{index}.{field.name}")
    for name, abs_sum in expected.norm_abs_sum.items():
        torch.testing.assert_close(got.norm_abs_sum[name], abs_sum, rtol=rtol, atol=atol)
    for field in dataclasses.fields(expected.depth):
        torch.testing.assert_close(getattr(got.depth, field.name), getattr(expected.depth, field.name), rtol=rtol,
                                   atol=atol)


def test_layerwise_pass_equals_full_pass(calibrated) -> None:
    """One block at a time, hidden states carried between blocks, gives the full pass's statistics."""
    model, batches, stats = calibrated
    uneven = [*batches, batches[0][:1]]  # a smaller last batch needs its own masks and positions
    assert_stats_close(calibrate_layerwise(model, uneven, CALIBRATION), calibrate(model, uneven, CALIBRATION),
                       rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("model_name", ["tiny preset", "64 experts top-8"])
def test_grouped_expert_statistics_equal_loop_reference(model_name: str) -> None:
    """Grouped-GEMM routed experts give the per-expert loop's statistics, over odd batch sizes (7 and 5
    tokens, probe set across both) where some experts are never hit."""
    if model_name == "tiny preset":
        model = build_model(load_config(["model=tiny"]).model, seed=0)
    else:
        model = small_model(num_experts=64, num_experts_per_tok=8)
    generator = torch.Generator().manual_seed(4)
    batches = [torch.randint(0, model.config.vocab_size, (1, length), generator=generator) for length in (7, 5)]
    cfg = CalibrationConfig(probe_tokens=9, batch_size=1)
    expected = calibrate(model, batches, cfg, expert_outputs_loop)
    assert any((layer.freq == 0).any() for layer in expected.moe.values())
    assert_stats_close(calibrate(model, batches, cfg, expert_outputs_grouped), expected, rtol=1e-6, atol=1e-9)


def test_instrumented_model_keeps_logits_and_is_restored() -> None:
    """While instrumented, logits match a plain forward (atol 1e-5); afterwards no forward or hook remains."""
    model = small_model()
    hooks_before = hooks_of(model)
    ids = make_batches()[0]
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        with StatsCollector(model, PROBE_TOKENS).installed():
            instrumented = model(ids, use_cache=False).logits
    torch.testing.assert_close(instrumented, plain, rtol=0.0, atol=1e-5)
    assert_pristine(model, hooks_before)


def test_model_is_restored_when_the_pass_raises() -> None:
    """An exception in the middle of the pass (after some MoE blocks ran) still restores every forward and hook."""
    model = small_model()
    model.train()
    hooks_before = hooks_of(model)

    def fail(module: nn.Module, args: tuple) -> None:
        raise RuntimeError("boom")

    handle = model.model.layers[2].register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        calibrate(model, make_batches(), CALIBRATION)
    handle.remove()
    assert_pristine(model, hooks_before)
    assert model.training


def hooks_of(model: nn.Module) -> dict[str, tuple[list, list]]:
    """Every module's forward hooks and pre-hooks (the model's own, e.g. the decode-cache hooks, included)."""
    return {name: (list(module._forward_hooks.values()), list(module._forward_pre_hooks.values()))
            for name, module in model.named_modules()}


def assert_pristine(model: nn.Module, hooks_before: dict[str, tuple[list, list]]) -> None:
    """No instance-level forward remains, and every module has exactly the hooks it had before calibration."""
    for name, module in model.named_modules():
        assert "forward" not in vars(module), name
    assert hooks_of(model) == hooks_before


def test_stats_round_trip_through_safetensors(calibrated, tmp_path) -> None:
    """save_stats -> load_stats returns bit-identical statistics."""
    _, _, stats = calibrated
    path = save_stats(stats, tmp_path / "stats.safetensors")
    assert_stats_close(load_stats(path), stats)
    assert list(tmp_path.iterdir()) == [path]


def test_fingerprint_survives_reload_and_tracks_weights(tmp_path) -> None:
    """Equal after save/reload; different after changing one sampled weight; a mismatch is a one-line UserError."""
    model = small_model()
    stats = CalibrationStats(fingerprint=model_fingerprint(model), num_layers=4)
    reloaded, _ = load_pretrained(save_pretrained(model, tmp_path / "model"))
    assert model_fingerprint(reloaded) == stats.fingerprint
    check_fingerprint(stats, reloaded, tmp_path / "stats.safetensors")
    with torch.no_grad():
        reloaded.model.layers[1].mlp.experts.down_proj[0, 0, 0] += 1e-3
    mismatch = r"^compress\.stats: fingerprint \w{12} of .*stats\.safetensors does not match"
    with pytest.raises(UserError, match=mismatch) as error:
        check_fingerprint(stats, reloaded, tmp_path / "stats.safetensors")
    assert "\n" not in str(error.value) and "slim calibrate" in str(error.value)


def test_missing_or_corrupt_stats_file_is_user_error(tmp_path) -> None:
    """A missing, truncated or foreign file fails with a UserError naming its path."""
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(UserError, match=str(missing)):
        load_stats(missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(UserError, match=str(corrupt)):
        load_stats(corrupt)


def test_short_calibration_split_is_used_whole_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Asking for more samples than the split holds calibrates on all of them and warns once."""
    dataset = PackedDataset(torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(4)))
    with caplog.at_level(logging.WARNING, logger="slim.harness.calibration.run"):
        batches = calibration_batches(dataset, CalibrationConfig(num_samples=5, batch_size=2))
    assert [batch.shape for batch in batches] == [(2, 8), (1, 8)]
    assert torch.equal(torch.cat(batches), dataset.sequences[:, :-1])
    assert len(caplog.records) == 1 and "calibration.num_samples" in caplog.text


def test_run_calibration_takes_the_first_samples(tiny_config) -> None:
    """num_samples sequences of the calibration split in batch_size batches; num_samples < 1 is a UserError."""
    cfg = tiny_config("calibration.num_samples=3", "calibration.batch_size=2", "calibration.probe_tokens=8")
    model = build_model(small_config(vocab_size=cfg.model.vocab_size))
    stats = run_calibration(model, cfg.data, cfg.calibration)
    assert stats.depth.num_sequences == 3 and stats.depth.num_tokens == 3 * cfg.data.seq_len
    with pytest.raises(UserError, match="calibration.num_samples"):
        run_calibration(model, cfg.data, dataclasses.replace(cfg.calibration, num_samples=0))
