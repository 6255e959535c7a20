"""ZEDA: zero experts are exact when unused and free when used, reload bit for bit, bad input is refused in one
line, the group balance loss and FLOPs accounting match hand/brute-force counts, stage 1 trains routers only."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slim.harness.config.schema import SlimConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.expert_flops import count_expert_flops, expert_flops_saved
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.view import view
from slim.harness.provenance import software
from slim.methods.zeda.group_balance import group_balance_loss
from slim.methods.zeda.inject import inject_zero_experts
from slim.methods.zeda.modeling_zeda import zero_expert_routers
from slim.methods.zeda.options import ZedaConfig
from slim.methods.zeda.stages import run_zeda

pytestmark = pytest.mark.e2e

# hidden 64, 2 layers (Gated DeltaNet + full attention), 8 experts top-2, vocab 1024, sequences of 64.
TINY_MODEL = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.full_attention_interval=2",
              "model.num_experts=8", "model.num_experts_per_tok=2", "model.moe_intermediate_size=32",
              "model.shared_expert_intermediate_size=64"]


@pytest.fixture
def cfg(tiny_config) -> SlimConfig:
    return tiny_config(*TINY_MODEL)


@pytest.fixture
def original(cfg: SlimConfig) -> torch.nn.Module:
    """A random tiny Qwen3-Next MoE with sharper routers (so routing is far from uniform)."""
    model = build_model(cfg.model, seed=0).eval()
    with torch.no_grad():
        for layer in view(model).moe_layers():
            layer.moe.router.mul_(20)
    return model


def _input_ids(batch: int = 2, length: int = 24, vocab: int = 1024) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def _injected(original: torch.nn.Module, **fields: object) -> torch.nn.Module:
    model = copy.deepcopy(original)
    inject_zero_experts(model, ZedaConfig(**{"num_zero_experts": 2, **fields}))
    return model


def _partly_routed(original: torch.nn.Module) -> torch.nn.Module:
    """Zero columns perturbed at random, so some tokens pick zero experts and others do not."""
    model = _injected(original)
    with torch.no_grad():
        for router in zero_expert_routers(model).values():
            router.zero_weight.add_(torch.randn(router.zero_weight.shape, generator=torch.Generator().manual_seed(2)))
    return model


def test_never_selected_zero_experts_give_the_original_logits_exactly(original):
    """Zero columns far below every real logit: logits bit-identical to the original model's, nothing skipped."""
    model = _injected(original, init_bias=-1e9)
    input_ids = _input_ids()
    with count_expert_flops(model) as counts:
        logits = _logits(model, input_ids)
    assert torch.equal(logits, _logits(original, input_ids))
    assert counts.overall() == 0.0


def test_zero_routed_slots_contribute_nothing_and_cost_no_expert(original):
    """Zero experts always on top (Z >= k): every routed slot is skipped, the block outputs its shared expert only."""
    model = _injected(original, init_bias=1e9)
    moe = view(model).moe_layers()[0].moe
    x = torch.randn(5, model.config.hidden_size)
    with count_expert_flops(model) as counts, torch.no_grad():
        out = moe.module(x[None])[0]
        assert torch.equal(out, moe.shared_forward(x))
    assert counts.overall() == 1.0


@pytest.mark.parametrize(("fields", "field"), [({"num_zero_experts": 0}, "zeda.num_zero_experts"),
                                               ({"group_size": 3}, "zeda.group_size"),
                                               ({"group_size": -1}, "zeda.group_size")])
def test_bad_injection_is_refused_in_one_line(original, fields, field):
    """A zero-expert count below 1 or a group size not dividing the 8 experts: one line naming the field."""
    with pytest.raises(UserError) as error:
        _injected(original, **fields)
    assert str(error.value).startswith(f"{field}:") and "\n" not in str(error.value)
    assert not zero_expert_routers(original)


def test_checkpoint_reloads_with_identical_logits(original, tmp_path):
    """save_pretrained -> load_pretrained re-installs the zero experts; logits equal, some slots skipped."""
    model = _partly_routed(original)
    input_ids = _input_ids()
    with count_expert_flops(model) as counts:
        expected = _logits(model, input_ids)
    assert 0 < counts.overall() < 1
    reloaded, _ = load_pretrained(save_pretrained(model, tmp_path / "zeda"))
    assert reloaded.config.num_zero_experts == 2
    assert set(zero_expert_routers(reloaded)) == set(zero_expert_routers(model))
    assert torch.equal(_logits(reloaded.eval(), input_ids), expected)


def test_group_balance_loss_matches_a_hand_computed_case():
    """E=4, Z=2, k=2, two tokens (probabilities chosen by hand): L = 1.03125 for g=2, 1.225 for g=0 (one group)."""
    probs = torch.tensor([[0.4, 0.1, 0.1, 0.1, 0.2, 0.1], [0.1, 0.1, 0.3, 0.25, 0.15, 0.1]])
    logits = [probs.log(), probs.log()]
    # g=2: groups {0,1} {2,3} {zero}; F = [1, 2, 1] / 4, P = [0.35, 0.375, 0.275]; 3 * <F, P>
    assert group_balance_loss(logits, num_zero_experts=2, group_size=2, top_k=2).item() == pytest.approx(1.03125)
    # g=E: groups {real} {zero}; F = [3, 1] / 4, P = [0.725, 0.275]; 2 * <F, P>
    assert group_balance_loss(logits, num_zero_experts=2, group_size=0, top_k=2).item() == pytest.approx(1.225)


def _brute_force_skips(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[int, tuple[int, int]]:
    """Layer -> (zero slots, all slots), by recomputing each router's top-k from its inputs."""
    inputs: dict[int, torch.Tensor] = {}
    layers = view(model).moe_layers()
    handles = [layer.moe.module.register_forward_pre_hook(
        lambda _m, args, index=layer.index: inputs.__setitem__(index, args[0].reshape(-1, args[0].shape[-1])))
        for layer in layers]
    _logits(model, input_ids)
    for handle in handles:
        handle.remove()
    counts = {}
    for index, router in zero_expert_routers(model).items():
        weight = torch.cat([router.weight, router.zero_weight])
        bias = torch.cat([torch.zeros(router.num_experts), router.zero_bias])
        ids = (inputs[index] @ weight.T + bias).topk(router.top_k, dim=-1).indices
        counts[index] = (int((ids >= router.num_experts).sum()), ids.numel())
    return counts


def test_flops_accounting_matches_a_brute_force_count(original):
    """Per-layer and overall skipped share equal a recount of zero-expert top-k picks from the router inputs."""
    model = _partly_routed(original)
    input_ids = _input_ids(batch=3, length=32)
    expected = _brute_force_skips(model, input_ids)
    measured = expert_flops_saved(model, [{"input_ids": input_ids[:2]}, input_ids[2:]])
    assert measured["per_layer"] == {index: zero / total for index, (zero, total) in expected.items()}
    zero, total = (sum(counts) for counts in zip(*expected.values()))
    assert measured["overall"] == pytest.approx(zero / total)  # same d, I in every layer: slot-weighted mean
    assert 0 < measured["overall"] < 1


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_two_stage_run_trains_routers_first_then_everything(cfg, tiny_config, tmp_path):
    """Stage 1 changes router tensors only (backbone bit-identical); stage 2 changes the backbone too."""
    data = CorpusDataModule(cfg.data, batch_size=4)
    data.setup()
    original_dir = save_pretrained(build_model(cfg.model, seed=0), tmp_path / "original", data.tokenizer)
    run_cfg = tiny_config(*TINY_MODEL, f"zeda.teacher={original_dir}", f"zeda.output={tmp_path / 'zeda'}",
                          "zeda.num_zero_experts=2", "zeda.router_share=0.5", "zeda.balance_weight=1.0",
                          "train.max_steps=4", "train.batch_size=2", "train.warmup_steps=1", "train.val_every=4",
                          "train.val_batches=1", "tracking.wandb=false")
    summary = run_zeda(run_cfg)
    run_dir = Path(run_cfg.run_dir)
    injected, stage1, final = (_weights(path) for path in (run_dir / "injected", run_dir / "stage-router" / "model",
                                                            tmp_path / "zeda"))
    is_router = [name for name in injected if ".mlp.gate." in name]
    assert {name for name in injected if "zero_" in name} < set(is_router)
    assert all(torch.equal(injected[name], stage1[name]) for name in injected if name not in is_router)
    assert any(not torch.equal(injected[name], stage1[name]) for name in is_router)
    assert any(not torch.equal(stage1[name], final[name]) for name in stage1 if name not in is_router)
    assert [stage["steps"] for stage in summary["stages"]] == [2, 2]
    assert 0 <= summary["expert_flops_saved"] <= 1 and summary["expert_flops_saved_per_layer"]
    saved = json.loads((run_dir / "zeda_summary.json").read_text())
    assert saved["val_perplexity"] == summary["val_perplexity"] and saved["software"] == software()
