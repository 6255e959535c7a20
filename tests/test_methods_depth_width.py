"""Depth and width selectors, the global expert budget, and registry key errors on hand-made statistics."""

from __future__ import annotations

import pytest
import torch

from slim.harness.calibration.stats import CalibrationStats, DepthStats
from slim.harness.compression.budget import allocate_experts, uniform_budget
from slim.harness.compression.depth_selectors import depth_selectors
from slim.harness.compression.expert_criteria import criteria
from slim.harness.compression.expert_reducers import reducers
from slim.harness.compression.expert_similarities import similarities
from slim.harness.compression.width_selectors import width_selectors
from slim.harness.errors import UserError


def depth_calibration(pooled_cos: list[float] | None = None, token_cos: list[float] | None = None,
                      num_sequences: int = 4, num_tokens: int = 10) -> CalibrationStats:
    """Stats whose per-layer means are exactly the given cosines."""
    layers = len(pooled_cos or token_cos)
    pooled = torch.tensor(pooled_cos or [0.0] * layers, dtype=torch.float64) * num_sequences
    tokens = torch.tensor(token_cos or [0.0] * layers, dtype=torch.float64) * num_tokens
    depth = DepthStats(num_tokens=num_tokens, num_sequences=num_sequences, token_cos_sum=tokens, pooled_cos_sum=pooled)
    return CalibrationStats(fingerprint="test", num_layers=layers, depth=depth)


def test_last_n_drops_the_last_layers():
    """last_n keeps layers 0 .. L-N-1 without statistics; N = 0 keeps everything."""
    assert depth_selectors.get("last_n")(None, 8, 2) == [0, 1, 2, 3, 4, 5]
    assert depth_selectors.get("last_n")(None, 8, 0) == list(range(8))


@pytest.mark.parametrize("name", ["last_n", "act_sim", "block_influence"])
@pytest.mark.parametrize("num_drop", [-1, 8])
def test_depth_selectors_reject_bad_num_drop(name, num_drop):
    """Dropping a negative number of layers or all of them fails naming compress.depth.num_drop."""
    stats = depth_calibration([0.5] * 8, [0.5] * 8)
    with pytest.raises(UserError, match="compress.depth.num_drop"):
        depth_selectors.get(name)(stats, 8, num_drop)


def test_act_sim_drops_chunk_at_most_similar_layer():
    """The chunk starts at argmax c_l over l >= 1; layer 0 (compared with the embeddings) is never a start."""
    stats = depth_calibration([0.99, 0.5, 0.6, 0.95, 0.7, 0.4, 0.3, 0.2])
    assert depth_selectors.get("act_sim")(stats, 8, 2) == [0, 1, 2, 5, 6, 7]


def test_act_sim_clamps_chunk_to_model_end():
    """A maximum near the end shifts the chunk back so all N layers exist and it still holds the maximum."""
    stats = depth_calibration([0.1, 0.5, 0.6, 0.4, 0.7, 0.4, 0.3, 0.98])
    assert depth_selectors.get("act_sim")(stats, 8, 3) == [0, 1, 2, 3, 4]


def test_depth_selectors_need_depth_stats():
    """act_sim and block_influence without statistics fail naming compress.depth.selector."""
    for name in ("act_sim", "block_influence"):
        with pytest.raises(UserError, match="compress.depth.selector"):
            depth_selectors.get(name)(None, 8, 2)
        with pytest.raises(UserError, match="compress.depth.selector"):
            depth_selectors.get(name)(CalibrationStats(fingerprint="x", num_layers=8), 8, 2)


def test_block_influence_drops_lowest_influence_layers():
    """block_influence drops the N layers with the smallest 1 - mean token cosine, as a stable sort says."""
    token_cos = torch.rand(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64).tolist()
    stats = depth_calibration(token_cos=token_cos)
    influence = 1.0 - torch.tensor(token_cos)
    dropped = set(torch.argsort(influence, stable=True)[:4].tolist())
    assert depth_selectors.get("block_influence")(stats, 12, 4) == [i for i in range(12) if i not in dropped]


def width_calibration() -> CalibrationStats:
    """Two norms: mean |out| [2, 0, 1, 4] and [1, 1, 1, 1] -> importance [1.5, 0.5, 1, 2.5]."""
    return CalibrationStats(
        fingerprint="test", num_layers=1,
        norm_abs_sum={"a": torch.tensor([4.0, 0.0, 2.0, 8.0]), "b": torch.tensor([3.0, 3.0, 3.0, 3.0])},
        norm_tokens={"a": 2, "b": 3},
    )


def test_rmsnorm_mean_abs_on_hand_sums():
    """eq 5: per-norm token means averaged over norms; the top dims come back ascending."""
    select = width_selectors.get("rmsnorm_mean_abs")
    assert select(width_calibration(), 4, 2) == [0, 3]
    assert select(width_calibration(), 4, 3) == [0, 2, 3]
    assert select(width_calibration(), 4, 4) == [0, 1, 2, 3]


def test_rmsnorm_mean_abs_rejects_bad_input():
    """Targets outside [1, d] and norm statistics of another width fail with one line."""
    select = width_selectors.get("rmsnorm_mean_abs")
    with pytest.raises(UserError, match="compress.width.hidden_size"):
        select(width_calibration(), 4, 5)
    with pytest.raises(UserError, match="hidden size 8"):
        select(width_calibration(), 8, 2)


def budget_importance() -> dict[int, torch.Tensor]:
    """Scale-free: layer 0 all 1; layer 1 [3.33, .33, .33, 0]; layer 2 [.5, .5, .5, 2.5]."""
    return {0: torch.tensor([4.0, 4.0, 4.0, 4.0]), 1: torch.tensor([10.0, 1.0, 1.0, 0.0]),
            2: torch.tensor([1.0, 1.0, 1.0, 5.0])}


def test_allocate_experts_ranks_globally_on_scale_free_importance():
    """Above one expert per layer, layer 0's experts (scale-free 1) win over layer 2's (0.5), then layer 2's
    over layer 1's (0.33), although layer 1's raw scores are the largest."""
    assert allocate_experts(budget_importance(), 6, 1) == {0: 4, 1: 1, 2: 1}
    assert allocate_experts(budget_importance(), 8, 1) == {0: 4, 1: 1, 2: 3}


def test_allocate_experts_respects_exemptions_and_floor():
    """Exempt layers keep all experts; the rest share what is left, never below min_per_layer."""
    assert allocate_experts(budget_importance(), 8, 1, exempt={1}) == {0: 3, 1: 4, 2: 1}
    assert allocate_experts(budget_importance(), 7, 2) == {0: 3, 1: 2, 2: 2}


def test_allocate_experts_random_invariants():
    """On random importances the counts sum to the total and stay within [min_per_layer, E_l]."""
    gen = torch.Generator().manual_seed(0)
    importance = {layer: torch.rand(16, generator=gen) * (layer + 1) for layer in range(6)}
    for total in (31, 37, 60, 96):
        counts = allocate_experts(importance, total, 3, exempt={5})
        assert sum(counts.values()) == total and counts[5] == 16
        assert all(3 <= count <= 16 for count in counts.values())


@pytest.mark.parametrize("total,min_per_layer,field", [(2, 1, "compress.experts.num_experts"),
                                                       (13, 1, "compress.experts.num_experts"),
                                                       (10, 5, "compress.experts.min_per_layer")])
def test_allocate_experts_rejects_infeasible_budgets(total, min_per_layer, field):
    """A total below the floors, above all experts, or a floor above a layer's size fails naming the field."""
    with pytest.raises(UserError, match=field):
        allocate_experts(budget_importance(), total, min_per_layer)


def test_uniform_budget():
    """Every non-exempt layer keeps `keep`; exempt ones keep all; keep > E fails naming compress.experts.num_experts."""
    assert uniform_budget({0: 8, 1: 8, 2: 6}, 4, exempt={1}) == {0: 4, 1: 8, 2: 4}
    with pytest.raises(UserError, match="compress.experts.num_experts"):
        uniform_budget({0: 8, 1: 6}, 7)
    with pytest.raises(UserError, match="compress.experts.exempt_first/exempt_last"):
        uniform_budget({0: 8}, 4, exempt={3})


@pytest.mark.parametrize("registry,valid", [
    (criteria, "ean, freq, reap, soft, weight_norm"),
    (similarities, "expert_outputs, router_logits, router_weights"),
    (reducers, "merge, partial_preserve, prune"),
    (depth_selectors, "act_sim, block_influence, last_n"),
    (width_selectors, "rmsnorm_mean_abs"),
])
def test_unknown_key_lists_valid_keys(registry, valid):
    """Every method registry rejects an unknown key with a UserError naming the field and all valid keys."""
    with pytest.raises(UserError, match=f"my.field: unknown .*valid: {valid}$"):
        registry.get("no_such_method", "my.field")
    assert all(doc for _, doc in registry.describe())
