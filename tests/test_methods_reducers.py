"""Expert reducers and expert plans on hand-made importances and similarities."""

from __future__ import annotations

import pytest
import torch

from slim.harness.compression.expert_reducers import reducers
from slim.harness.compression.plan import ExpertGroup, ExpertPlan, apply_plan
from slim.harness.errors import UserError

ALL_REDUCERS = ["prune", "merge", "partial_preserve"]
MERGING = ["merge", "partial_preserve"]


def random_experts(num_experts: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """router [E, 4], gate_up_proj [E, 6, 4], down_proj [E, 4, 3]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(num_experts, 4, generator=gen), torch.randn(num_experts, 6, 4, generator=gen),
            torch.randn(num_experts, 4, 3, generator=gen))


def random_similarity(num_experts: int, seed: int = 0) -> torch.Tensor:
    rows = torch.randn(num_experts, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = rows / rows.norm(dim=1, keepdim=True)
    return rows @ rows.T


def symmetric(num_experts: int, pairs: dict[tuple[int, int], float]) -> torch.Tensor:
    """Similarity matrix with 1 on the diagonal, the given symmetric pairs and 0 elsewhere."""
    sim = torch.eye(num_experts, dtype=torch.float64)
    for (i, j), value in pairs.items():
        sim[i, j] = sim[j, i] = value
    return sim


def test_prune_keeps_exactly_the_top_n():
    """prune keeps the num_keep highest-importance experts, unchanged, in ascending id order."""
    importance = torch.rand(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plan = reducers.get("prune")(importance, None, 4)
    expected = sorted(torch.argsort(importance, descending=True)[:4].tolist())
    assert plan.kept_ids() == expected and plan.num_kept == 4
    assert plan.dropped_ids() == sorted(set(range(10)) - set(expected))
    router, gate_up, down = random_experts(10)
    new_router, new_gate_up, new_down = apply_plan(plan, router, gate_up, down)
    assert torch.equal(new_router, router[expected]) and torch.equal(new_gate_up, gate_up[expected])
    assert torch.equal(new_down, down[expected])


def test_prune_breaks_ties_by_lower_id():
    """Equal importances keep the lower expert ids."""
    plan = reducers.get("prune")(torch.tensor([1.0, 2.0, 1.0, 1.0]), None, 2)
    assert plan.kept_ids() == [0, 1]


@pytest.mark.parametrize("name", ALL_REDUCERS)
def test_keeping_all_experts_is_the_identity(name):
    """num_keep == E gives the identity plan, and apply_plan returns equal tensors that are new copies."""
    importance = torch.rand(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plan = reducers.get(name)(importance, random_similarity(7), 7)
    assert plan.is_identity()
    tensors = random_experts(7)
    for new, old in zip(apply_plan(plan, *tensors), tensors):
        assert torch.equal(new, old) and new.data_ptr() != old.data_ptr()


@pytest.mark.parametrize("name", MERGING)
def test_merging_identical_experts_gives_that_expert(name):
    """When every expert is the same, any importance-weighted merge reproduces it."""
    router, gate_up, down = random_experts(1)
    tensors = (router.repeat(8, 1), gate_up.repeat(8, 1, 1), down.repeat(8, 1, 1))
    importance = torch.rand(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    plan = reducers.get(name)(importance, random_similarity(8), 3)
    new_router, new_gate_up, new_down = apply_plan(plan, *tensors)
    torch.testing.assert_close(new_gate_up, gate_up.repeat(3, 1, 1))
    torch.testing.assert_close(new_down, down.repeat(3, 1, 1))
    assert torch.equal(new_router, router.repeat(3, 1))


def test_merge_weights_follow_eq8_on_hand_case():
    """I = [4, 3, 2, 1], keep 2: expert 3 joins 0 (w = 4/5, 1/5), expert 2 joins 1 (w = 3/5, 2/5)."""
    importance = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    similarity = symmetric(4, {(2, 1): 0.9, (2, 0): 0.1, (3, 0): 0.5, (3, 1): 0.4})
    plan = reducers.get("merge")(importance, similarity, 2)
    assert plan.groups == [ExpertGroup((0, 3), (0.8, 0.2), 0), ExpertGroup((1, 2), (0.6, 0.4), 1)]
    router, gate_up, down = random_experts(4)
    new_router, new_gate_up, new_down = apply_plan(plan, router, gate_up, down)
    torch.testing.assert_close(new_gate_up[0], 0.8 * gate_up[0] + 0.2 * gate_up[3])
    torch.testing.assert_close(new_down[1], 0.6 * down[1] + 0.4 * down[2])
    assert torch.equal(new_router, router[[0, 1]])


def test_merge_with_zero_importance_uses_equal_weights():
    """A group whose importances sum to 0 is merged with equal weights."""
    plan = reducers.get("merge")(torch.zeros(4, dtype=torch.float64), symmetric(4, {(2, 0): 0.9, (3, 1): 0.9}), 2)
    assert plan.groups == [ExpertGroup((0, 2), (0.5, 0.5), 0), ExpertGroup((1, 3), (0.5, 0.5), 1)]


def test_partial_preserve_hand_case():
    """8 experts, keep 4: the top 2 (0, 5) stay intact, the next 2 (2, 7) are bases, and each other expert joins
    its most similar base even when an intact expert is more similar still."""
    importance = torch.tensor([0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.05, 0.4], dtype=torch.float64)
    similarity = symmetric(8, {
        (3, 7): 0.6, (3, 2): 0.1, (3, 0): 0.95,
        (4, 2): 0.5, (4, 7): 0.4,
        (1, 7): 0.3, (1, 2): 0.2, (1, 5): 0.9,
        (6, 2): 0.7, (6, 7): -0.2,
    })
    plan = reducers.get("partial_preserve")(importance, similarity, 4)
    assert plan.kept_ids() == [0, 2, 5, 7]
    assert plan.groups[0] == ExpertGroup.single(0) and plan.groups[2] == ExpertGroup.single(5)
    assert plan.groups[1].members == (2, 4, 6) and plan.groups[3].members == (7, 1, 3)
    assert plan.groups[1].weights == pytest.approx((0.7 / 0.95, 0.2 / 0.95, 0.05 / 0.95))
    assert plan.groups[3].weights == pytest.approx((0.4 / 0.8, 0.1 / 0.8, 0.3 / 0.8))
    assert plan.merge_map() == {0: 0, 2: 1, 4: 1, 6: 1, 5: 2, 7: 3, 1: 3, 3: 3}


def test_partial_preserve_intact_ratio_moves_experts_from_intact_to_bases():
    """The hand case with intact_ratio=0.25: only expert 0 stays intact, 5, 2 and 7 become bases, and expert 1
    now joins base 5 (its most similar), which was intact at the paper's 1/2."""
    importance = torch.tensor([0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.05, 0.4], dtype=torch.float64)
    similarity = symmetric(8, {(3, 7): 0.6, (3, 2): 0.1, (3, 0): 0.95, (4, 2): 0.5, (4, 7): 0.4,
                               (1, 7): 0.3, (1, 2): 0.2, (1, 5): 0.9, (6, 2): 0.7, (6, 7): -0.2})
    plan = reducers.get("partial_preserve")(importance, similarity, 4, intact_ratio=0.25)
    assert plan.kept_ids() == [0, 2, 5, 7] and plan.groups[0] == ExpertGroup.single(0)
    assert [group.members for group in plan.groups[1:]] == [(2, 4, 6), (5, 1), (7, 3)]
    with pytest.raises(UserError, match=r"compress.experts.intact_ratio: must be in \[0, 1\) .*got 1.0"):
        reducers.get("partial_preserve")(importance, similarity, 4, intact_ratio=1.0)


def test_partial_preserve_odd_target_and_most_similar_bases():
    """keep 3 of 5: one intact expert; with base_choice='most_similar_to_rest' the two bases are the candidates
    with the highest mean cosine to the other candidates."""
    importance = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    similarity = symmetric(5, {(3, 4): 0.9, (3, 1): 0.8, (3, 2): 0.1, (4, 2): 0.7, (4, 1): 0.2, (1, 2): 0.0})
    plan = reducers.get("partial_preserve")(importance, similarity, 3, base_choice="most_similar_to_rest")
    assert plan.kept_ids() == [0, 3, 4]  # mean cosine: 3 -> 0.6, 4 -> 0.6, 2 -> 0.27, 1 -> 0.33
    assert plan.groups[1].members == (3, 1) and plan.groups[2].members == (4, 2)
    default = reducers.get("partial_preserve")(importance, similarity, 3)
    assert default.kept_ids() == [0, 1, 2]


@pytest.mark.parametrize("name", MERGING)
@pytest.mark.parametrize("num_keep", [1, 3, 6])
def test_merge_map_covers_every_expert(name, num_keep):
    """Merging reducers place every old expert in exactly one group, and groups are ordered by base id."""
    importance = torch.rand(9, generator=torch.Generator().manual_seed(num_keep), dtype=torch.float64)
    plan = reducers.get(name)(importance, random_similarity(9, seed=num_keep), num_keep)
    assert sorted(plan.merge_map()) == list(range(9)) and plan.num_kept == num_keep
    assert plan.kept_ids() == sorted(plan.kept_ids()) and plan.dropped_ids() == []


@pytest.mark.parametrize("name", ALL_REDUCERS)
@pytest.mark.parametrize("num_keep", [0, 5])
def test_reducers_reject_out_of_range_targets(name, num_keep):
    """num_keep outside [1, E] fails with a UserError naming compress.experts.num_experts."""
    with pytest.raises(UserError, match="compress.experts.num_experts"):
        reducers.get(name)(torch.ones(4), random_similarity(4), num_keep)


@pytest.mark.parametrize("name", MERGING)
def test_merging_reducers_need_similarity(name):
    """merge and partial_preserve without a similarity fail naming compress.experts.similarity."""
    with pytest.raises(UserError, match="compress.experts.similarity"):
        reducers.get(name)(torch.ones(4), None, 2)


def test_unknown_base_choice_is_rejected():
    """An unknown partial_preserve base choice names the field and the valid values."""
    with pytest.raises(UserError, match="compress.experts.base_choice.*next_important, most_similar_to_rest"):
        reducers.get("partial_preserve")(torch.ones(4), random_similarity(4), 2, base_choice="random")


@pytest.mark.parametrize("groups,num_experts,message", [
    ([ExpertGroup.single(0), ExpertGroup((0, 1), (0.5, 0.5), 1)], 3, "several groups"),
    ([ExpertGroup.single(3)], 3, "outside"),
    ([], 3, "at least one"),
])
def test_plan_validation(groups, num_experts, message):
    """Plans with shared members, out-of-range ids or no groups are rejected."""
    with pytest.raises(ValueError, match=message):
        ExpertPlan(groups=groups, num_experts=num_experts)


@pytest.mark.parametrize("members,weights,router_row,message", [
    ((), (), 0, "at least one member"),
    ((0, 1), (0.6, 0.5), 0, "sum to 1"),
    ((0, 1), (1.0,), 0, "weights for"),
    ((0, 0), (0.5, 0.5), 0, "repeated"),
    ((0, 1), (0.5, 0.5), 2, "router_row"),
])
def test_group_validation(members, weights, router_row, message):
    """Groups must be non-empty, one weight per distinct member, weights summing to 1, router row a member."""
    with pytest.raises(ValueError, match=message):
        ExpertGroup(members, weights, router_row)


def test_apply_plan_keeps_dtype_and_checks_sizes():
    """apply_plan returns tensors in the input dtype and refuses tensors of another expert count."""
    router, gate_up, down = (t.bfloat16() for t in random_experts(4))
    plan = ExpertPlan(groups=[ExpertGroup((1, 2), (0.25, 0.75), 2)], num_experts=4)
    new_router, new_gate_up, new_down = apply_plan(plan, router, gate_up, down)
    assert new_gate_up.dtype == torch.bfloat16 and new_gate_up.shape == (1, 6, 4) and new_down.shape == (1, 4, 3)
    assert torch.equal(new_router[0], router[2])
    with pytest.raises(ValueError, match="plan expects 4"):
        apply_plan(plan, router[:3], gate_up[:3], down[:3])
