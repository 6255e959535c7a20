"""Group-limited routing (issue 26): DeepSeek-V3 and GLM-4.5 students route through `n_group` / `topk_group` exactly
as a brute-force loop over the released rule does, before and after a cut; the selection bias follows the router rows
it keeps; counts the groups cannot take are refused in one line; a depth cut keeps the dense layers a prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from slim.harness.compression.compress import compress
from slim.harness.compression.depth import drop_layers
from slim.harness.compression.experts import reduce_experts
from slim.harness.compression.plan import ExpertGroup, ExpertPlan
from slim.harness.config.load import load_config
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import save_pretrained
from slim.harness.models.view import MoEView, view
from tests.conftest import TINY_OVERRIDES
from tests.tiny_families import FAMILY_SHAPE, SHAPE, Teacher, make_teacher

GROUPED = ("deepseek_v3", "glm4_moe")
IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))


def released_routing(x: torch.Tensor, router: torch.Tensor, bias: torch.Tensor, groups: int, best_groups: int,
                     top_k: int, scale: float) -> list[dict[int, float]]:
    """Token by token, as the DeepSeek-V3 report states the rule: sigmoid scores, the bias added for selection
    only, the `best_groups` groups of contiguous experts with the best sum of their two best biased scores, top-k
    among those, the unbiased scores of the chosen renormalized and scaled. Returns expert -> weight per token."""
    chosen = []
    size = router.shape[0] // groups
    for token in x.double():
        scores = [float(torch.sigmoid(token @ row.double())) for row in router]
        biased = [score + float(b) for score, b in zip(scores, bias)]
        group_score = [sum(sorted(biased[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(groups)]
        kept_groups = sorted(range(groups), key=lambda g: -group_score[g])[:best_groups]
        candidates = [e for g in kept_groups for e in range(g * size, (g + 1) * size)]
        experts = sorted(candidates, key=lambda e: -biased[e])[:top_k]
        total = sum(scores[e] for e in experts)
        chosen.append({e: scores[e] / total * scale for e in experts})
    return chosen


def assert_routes_as_released(moe: MoEView, config, x: torch.Tensor) -> None:
    _, weights, ids = moe.route(x)
    reference = released_routing(x, moe.router.detach(), moe.selection_bias, config.n_group, config.topk_group,
                                 moe.top_k, config.routed_scaling_factor)
    for token, expected in enumerate(reference):
        got = dict(zip(ids[token].tolist(), weights[token].tolist()))
        assert set(got) == set(expected), (token, got, expected)
        assert all(abs(got[e] - expected[e]) < 1e-5 for e in got)


def _model(family: str) -> torch.nn.Module:
    """A tiny model of `family` whose selection biases are far from zero, so they change which experts win."""
    model = build_model(load_config([*TINY_OVERRIDES, *SHAPE, f"model.family={family}", *FAMILY_SHAPE[family]]).model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in view(model).moe_layers():
            layer.moe.router.mul_(20)  # sigmoid scores spread over (0, 1), not all near 0.5
            layer.moe.selection_bias.copy_(torch.randn(layer.moe.num_experts, generator=generator) * 0.3)
    return model.eval()


@pytest.mark.parametrize("family", GROUPED)
def test_routing_matches_the_released_rule_before_and_after_a_prune(family):
    model = _model(family)
    x = torch.randn(64, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    moes = {layer.index: layer.moe for layer in view(model).moe_layers()}
    before = {index: (moe.router.detach().clone(), moe.selection_bias.clone()) for index, moe in moes.items()}
    for moe in moes.values():
        assert_routes_as_released(moe, model.config, x)
        unbiased = released_routing(x, moe.router.detach(), torch.zeros(8), model.config.n_group,
                                    model.config.topk_group, moe.top_k, model.config.routed_scaling_factor)
        assert unbiased != released_routing(x, moe.router.detach(), moe.selection_bias, model.config.n_group,
                                            model.config.topk_group, moe.top_k, model.config.routed_scaling_factor)
    kept = [1, 2, 4, 7]  # two from each group of four
    reduce_experts(model, {index: ExpertPlan([ExpertGroup.single(e) for e in kept], 8) for index in moes})
    for index, moe in ((layer.index, layer.moe) for layer in view(model).moe_layers()):
        router, bias = before[index]
        assert torch.equal(moe.router, router[kept]) and torch.equal(moe.selection_bias, bias[kept])
        assert moe.module.gate.num_experts == 4
        assert_routes_as_released(moe, model.config, x)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Teacher]:
    root = tmp_path_factory.mktemp("grouped")
    return {family: make_teacher(root, family, tokenizer_dir) for family in GROUPED}


@pytest.mark.parametrize(("target", "message"), [
    ("compress.experts.num_experts=3", "compress.experts.num_experts: 3 experts is not allowed; allowed: a multiple "
                                       "of model n_group=2 with at least 2 per group"),
    ("compress.experts.num_experts=2", "compress.experts.num_experts: 2 experts is not allowed"),
    ("compress.experts.top_k=5", "compress.experts.top_k: 5 is not allowed; allowed: 1..4 (topk_group=1 groups of 4"),
])
def test_counts_the_groups_cannot_take_are_refused_in_one_line_before_work(teachers, tmp_path, target, message):
    with pytest.raises(UserError) as error:
        compress(teachers["deepseek_v3"].recipe(tmp_path / "student", target))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert not (tmp_path / "student").exists()


def test_a_global_budget_with_unequal_groups_is_refused(teachers, tmp_path):
    """A global budget picks counts per layer; one that breaks the groups is refused before anything is written."""
    with pytest.raises(UserError, match="n_group=2"):
        compress(teachers["glm4_moe"].recipe(tmp_path / "student", "compress.experts.num_experts=5",
                                             "compress.experts.budget=global", "compress.experts.min_per_layer=2"))
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize("family", GROUPED)
def test_dropping_the_dense_layer_keeps_the_dense_prefix_and_reloads_identically(family, tmp_path):
    model = _model(family)
    assert view(model).layers[0].moe is None and model.config.first_k_dense_replace == 1
    drop_layers(model, [1, 2, 3])
    assert model.config.first_k_dense_replace == 0
    save_pretrained(model, tmp_path / "student")
    assert json.loads((tmp_path / "student" / "config.json").read_text())["first_k_dense_replace"] == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    for tensor in plain.parameters():  # out of the safetensors memory map, as the harness's copy is
        tensor.data = tensor.data.clone()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=IDS, use_cache=False).logits, model(input_ids=IDS, use_cache=False).logits)
