"""Structural surgery (depth, width, experts) on tiny models, meta-device planning, per-layer expert reload."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, PreTrainedModel

from slim.harness.compression.plan import ExpertGroup, ExpertPlan
from slim.harness.compression.shapes import student_shape
from slim.harness.compression.surgery import drop_layers, reduce_experts, shrink_hidden
from slim.harness.config.schema import ModelConfig
from slim.harness.errors import UserError
from slim.harness.models.build import build_hf_config, build_model
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.params import count_parameters
from slim.harness.models.view import view

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("qwen3_next", "qwen3_moe", "mixtral")


def tiny(family: str) -> ModelConfig:
    """Hidden 64, 4 layers, 8 experts top-2, vocab 256; the expert and shared-expert widths equal the hidden
    size on purpose, so surgery that matched dims by size would slice the wrong ones."""
    cfg = ModelConfig(family=family, vocab_size=256, hidden_size=64, num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=64, shared_expert_intermediate_size=64)
    if family == "qwen3_next":
        return cfg
    return dataclasses.replace(cfg, shared_expert_intermediate_size=0, partial_rotary_factor=1.0)


def token_ids(seq_len: int = 9) -> torch.Tensor:
    return torch.randint(0, 256, (2, seq_len), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(ids).logits


def shapes(model: PreTrainedModel) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@torch.no_grad()
def routed_experts(model: PreTrainedModel, ids: torch.Tensor) -> dict[int, list[int]]:
    """MoE layer -> experts that some token of `ids` is routed to."""
    routed: dict[int, set[int]] = {}

    def record(index: int):  # the router returns (logits, top-k weights, top-k ids)
        return lambda module, args, out: routed.setdefault(index, set()).update(out[2].flatten().tolist())

    hooks = [layer.moe.module.gate.register_forward_hook(record(layer.index)) for layer in view(model).moe_layers()]
    model.eval()(ids)
    for hook in hooks:
        hook.remove()
    return {index: sorted(experts) for index, experts in routed.items()}


def keep_routed(model: PreTrainedModel, ids: torch.Tensor) -> dict[int, ExpertPlan]:
    """Per MoE layer, the plan that keeps exactly the experts `ids` reaches (the others have zero frequency)."""
    return {index: ExpertPlan([ExpertGroup.single(e) for e in kept], model.config.num_experts)
            for index, kept in routed_experts(model, ids).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_is_the_identity(family: str) -> None:
    """All layers, all dims in order and identity expert plans leave every tensor and the logits bit-identical."""
    model = build_model(tiny(family))
    before, state = logits(model, token_ids()), {k: v.clone() for k, v in model.state_dict().items()}
    drop_layers(model, range(4))
    shrink_hidden(model, range(64))
    reduce_experts(model, {layer.index: ExpertPlan([ExpertGroup.single(e) for e in range(8)], 8)
                           for layer in view(model).moe_layers()})
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, token_ids()), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_drop_layers_equals_a_fresh_shallower_model(family: str) -> None:
    """Dropping layers 1 and 2 gives the model that a 2-layer config (with the kept layer types) builds
    from the kept layers' weights: same keys, same logits; every layer_idx is its new position."""
    model = build_model(tiny(family))
    kept = [0, 3]
    expected_config = build_hf_config(dataclasses.replace(tiny(family), num_hidden_layers=2))
    if family == "qwen3_next":
        expected_config.layer_types = [model.config.layer_types[i] for i in kept]  # linear, full
    drop_layers(model, kept)
    fresh = AutoModelForCausalLM.from_config(expected_config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(logits(model, token_ids()), logits(fresh, token_ids()))
    assert model.config.to_dict() == fresh.config.to_dict()
    assert all(module.layer_idx == position for position, layer in enumerate(model.model.layers)
               for module in layer.modules() if hasattr(module, "layer_idx"))


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_cache_after_dropping_layers(family: str) -> None:
    """After dropping layers, greedy generation with the KV / recurrent cache equals generation without it."""
    model = build_model(tiny(family)).eval()
    drop_layers(model, [1, 3])
    ids = token_ids(5)
    cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (2, 11) and torch.equal(cached, uncached)


def test_dense_layers_stay_dense_after_cuts(tmp_path: Path) -> None:
    """With decoder_sparse_step 2 (layers 0, 2 dense), keeping layers 1, 2 and shrinking the width gives a
    config whose MoE / dense pattern matches the weights: plain transformers reloads it with the same logits."""
    config = build_hf_config(tiny("qwen3_moe"))
    config.decoder_sparse_step, config.intermediate_size = 2, 48
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    drop_layers(model, [1, 2])
    shrink_hidden(model, list(range(1, 64, 2)))
    assert [layer.moe is not None for layer in view(model).layers] == [True, False]
    save_pretrained(model, tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert shapes(reloaded) == shapes(model)
    torch.testing.assert_close(logits(reloaded, token_ids()), logits(model, token_ids()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_permuting_the_width_keeps_the_function(family: str) -> None:
    """Keeping all hidden dims in a random order reorders every width dim consistently (RMSNorm does not care
    about order), so the logits stay the same: each declared hidden dim is the right dim of the right tensor."""
    model = build_model(tiny(family))
    before = logits(model, token_ids())
    shrink_hidden(model, torch.randperm(64, generator=torch.Generator().manual_seed(0)).tolist())
    torch.testing.assert_close(logits(model, token_ids()), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_shrink_hidden_equals_a_fresh_narrower_model(family: str) -> None:
    """Keeping 40 non-contiguous dims gives exactly the tensors, module tree and config of a model built with
    hidden_size 40; loaded with the sliced weights, that model gives the same logits."""
    model = build_model(tiny(family))
    embed = model.model.embed_tokens.weight.detach().clone()
    kept = sorted(torch.randperm(64, generator=torch.Generator().manual_seed(0))[:40].tolist())
    shrink_hidden(model, kept)
    fresh = build_model(dataclasses.replace(tiny(family), hidden_size=40))
    assert shapes(model) == shapes(fresh)
    assert str(model) == str(fresh) and model.config.to_dict() == fresh.config.to_dict()
    assert torch.equal(model.model.embed_tokens.weight, embed[:, kept])
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(logits(model, token_ids()), logits(fresh, token_ids()))


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_never_routed_experts_keeps_outputs(family: str) -> None:
    """3 tokens reach at most 6 of 8 experts per layer; dropping the rest (zero frequency) leaves the logits
    on those tokens unchanged: top-k weights are renormalized over the chosen k, so the smaller softmax
    denominator cancels (up to rounding)."""
    model = build_model(tiny(family))
    ids = token_ids(3)[:1]
    before = logits(model, ids)
    plans = keep_routed(model, ids)
    reduce_experts(model, plans)
    assert [layer.moe.num_experts for layer in view(model).moe_layers()] == [p.num_kept for p in plans.values()]
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_merging_a_never_routed_copy_keeps_outputs(family: str) -> None:
    """Make a never-routed expert j an exact copy of a routed expert i, then merge j into i (weights 1/2, 1/2,
    router row of i) and drop the other unrouted experts: the merged expert is i again, so outputs stay."""
    model = build_model(tiny(family))
    ids = token_ids(3)[:1]
    routed = routed_experts(model, ids)
    plans = {}
    for layer in view(model).moe_layers():
        kept = routed[layer.index]
        i, j = kept[0], min(set(range(8)) - set(kept))
        with torch.no_grad():
            layer.moe.gate_up_proj[j] = layer.moe.gate_up_proj[i]
            layer.moe.down_proj[j] = layer.moe.down_proj[i]
        merged = ExpertGroup(members=(i, j), weights=(0.5, 0.5), router_row=i)
        plans[layer.index] = ExpertPlan([merged, *(ExpertGroup.single(e) for e in kept[1:])], 8)
    before = logits(model, ids)
    reduce_experts(model, plans)
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=1e-6)


def test_per_layer_expert_counts_reload_exactly(tmp_path: Path) -> None:
    """Layers keeping different expert counts record them in config.num_experts_per_layer; the harness loader
    rebuilds those shapes and reproduces the logits bit for bit, also after a depth cut."""
    model = build_model(tiny("qwen3_next"))
    reduce_experts(model, {0: ExpertPlan([ExpertGroup.single(e) for e in (1, 4, 6)], 8),
                           2: ExpertPlan([ExpertGroup((0, 5), (0.25, 0.75), 5), ExpertGroup.single(2)], 8)})
    assert model.config.num_experts == 8 and model.config.num_experts_per_layer == [3, 8, 2, 8]
    drop_layers(model, [0, 2, 3])
    assert model.config.num_experts_per_layer == [3, 2, 8]
    save_pretrained(model, tmp_path / "student")
    reloaded, _ = load_pretrained(tmp_path / "student")
    assert shapes(reloaded) == shapes(model) and reloaded.config.num_experts_per_layer == [3, 2, 8]
    assert torch.equal(logits(reloaded, token_ids()), logits(model, token_ids()))


def test_uniform_expert_counts_reload_with_plain_transformers(tmp_path: Path) -> None:
    """A uniform reduction (8 -> 4 experts, top-2) leaves no per-layer list and reloads with plain
    AutoModelForCausalLM.from_pretrained."""
    model = build_model(tiny("qwen3_next"))
    reduce_experts(model, {layer.index: ExpertPlan([ExpertGroup.single(e) for e in (0, 2, 5, 7)], 8)
                           for layer in view(model).moe_layers()}, top_k=2)
    assert model.config.num_experts == 4 and not hasattr(model.config, "num_experts_per_layer")
    save_pretrained(model, tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    torch.testing.assert_close(logits(reloaded, token_ids()), logits(model, token_ids()), rtol=0, atol=1e-6)


def test_surgery_on_meta_matches_cpu_shapes() -> None:
    """Drop, shrink and merge on the meta device give the same shapes and config as on real tensors."""
    def cut(model: PreTrainedModel) -> PreTrainedModel:
        drop_layers(model, [0, 1, 3])
        shrink_hidden(model, list(range(0, 64, 2)))
        plan = ExpertPlan([ExpertGroup((0, 1), (0.5, 0.5), 1), *(ExpertGroup.single(e) for e in (3, 4))], 8)
        reduce_experts(model, {1: plan}, top_k=2)
        return model

    on_meta, on_cpu = cut(build_model(tiny("qwen3_next"), device="meta")), cut(build_model(tiny("qwen3_next")))
    assert on_meta.model.embed_tokens.weight.is_meta
    assert shapes(on_meta) == shapes(on_cpu) and on_meta.config.to_dict() == on_cpu.config.to_dict()


def test_paper_recipe_parameter_counts_on_meta() -> None:
    """SlimQwen's recipe on Qwen3-Next-80B-A3B (drop the last 12 of 48 layers, hidden 2048 -> 1536, experts
    512 -> 256, top-k 10 -> 8) gives ~23.2B total / ~2.1B active, the count of a model built from the result."""
    teacher = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                                  OmegaConf.load(REPO / "conf/model/qwen3-next-80b-a3b.yaml")))
    shape = student_shape(teacher, num_drop=12, hidden_size=1536, num_experts=256, top_k=8)
    print(f"student: total={shape.params.total:,} active={shape.params.active:,}")
    assert abs(shape.params.total / 23.2e9 - 1) < 0.03 and abs(shape.params.active / 2.1e9 - 1) < 0.03
    assert (shape.model.num_hidden_layers, shape.model.hidden_size, shape.model.num_experts,
            shape.model.num_experts_per_tok) == (36, 1536, 256, 8)
    assert count_parameters(build_model(shape.model, device="meta", dtype=torch.bfloat16)) == shape.params


@pytest.mark.parametrize(
    ("cut", "field"),
    [
        (lambda m: drop_layers(m, []), "compress.depth"),
        (lambda m: drop_layers(m, [0, 4]), "compress.depth"),
        (lambda m: drop_layers(m, [2, 1]), "compress.depth"),
        (lambda m: drop_layers(m, [1, 1]), "compress.depth"),
        (lambda m: shrink_hidden(m, [0, 64]), "compress.width"),
        (lambda m: shrink_hidden(m, [-1]), "compress.width"),
        (lambda m: shrink_hidden(m, [3, 5, 3]), "compress.width"),
        (lambda m: reduce_experts(m, {0: ExpertPlan([ExpertGroup.single(0)], 8)}), "compress.experts.top_k"),
        (lambda m: reduce_experts(m, {}, top_k=9), "compress.experts.top_k"),
        (lambda m: student_shape(tiny("qwen3_next"), num_drop=4), "compress.depth.num_drop"),
        (lambda m: student_shape(tiny("qwen3_next"), hidden_size=65), "compress.width.hidden_size"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(cut, field: str) -> None:
    """Out-of-range, empty, unsorted or duplicated ids and a top-k above the kept experts fail before any edit."""
    model = build_model(tiny("qwen3_next"), device="meta")
    before = shapes(model)
    with pytest.raises(UserError, match=f"^{field}") as error:
        cut(model)
    assert "\n" not in str(error.value) and shapes(model) == before


def test_width_pruning_refuses_families_without_a_hidden_dim_table() -> None:
    """OLMoE sizes its q/k norms by hidden_size, so it declares no width table and shrink_hidden says so."""
    model = build_model(dataclasses.replace(tiny("olmoe"), head_dim=16), device="meta")
    with pytest.raises(UserError, match="compress.width.hidden_size: .*olmoe"):
        shrink_hidden(model, range(32))
