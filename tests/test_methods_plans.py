"""Progressive plans: the paper's stage shapes and token splits (Table 5, Appendix A.5)."""

import pytest

from slim.harness.errors import UserError
from slim.harness.progressive_plans import Shape, plans

TEACHER = Shape(num_layers=48, hidden_size=2048, num_experts=512, top_k=10)
FINAL = Shape(num_layers=36, hidden_size=1536, num_experts=256, top_k=8)


def shapes(name: str) -> list[tuple[int, int, int, int, float]]:
    return [(s.shape.num_layers, s.shape.hidden_size, s.shape.num_experts, s.shape.top_k, s.token_share)
            for s in plans.get(name)(TEACHER, FINAL)]


def test_one_shot_is_the_final_shape_on_all_tokens():
    """one_shot: a single stage at the target with 100% of the budget."""
    assert shapes("one_shot") == [(36, 1536, 256, 8, 1.0)]


def test_two_stage_plans_match_the_paper():
    """depth_first / width_first / joint cut half of their dimension(s) on 10% of the tokens."""
    assert shapes("depth_first") == [(42, 2048, 512, 10, 0.1), (36, 1536, 256, 8, 0.9)]
    assert shapes("width_first") == [(48, 1792, 512, 10, 0.1), (36, 1536, 256, 8, 0.9)]
    assert shapes("joint") == [(42, 1792, 512, 10, 0.1), (36, 1536, 256, 8, 0.9)]


def test_three_stage_plans_match_appendix_a5():
    """depth_first_3: half depth, full depth, width on 5/5/90% (paper 20B/20B/360B); width_first_3 mirrored."""
    assert shapes("depth_first_3") == [(42, 2048, 512, 10, 0.05), (36, 2048, 512, 10, 0.05),
                                       (36, 1536, 256, 8, 0.9)]
    assert shapes("width_first_3") == [(48, 1792, 512, 10, 0.05), (48, 1536, 512, 10, 0.05),
                                       (36, 1536, 256, 8, 0.9)]


@pytest.mark.parametrize("name", plans.keys())
def test_every_plan_shrinks_monotonically_and_spends_the_whole_budget(name: str):
    """Stages never grow a dimension, end at the final shape, and token shares sum to 1."""
    stages = plans.get(name)(TEACHER, FINAL)
    previous = TEACHER
    for stage in stages:
        for field in ("num_layers", "hidden_size", "num_experts", "top_k"):
            assert getattr(stage.shape, field) <= getattr(previous, field)
        previous = stage.shape
    assert stages[-1].shape == FINAL
    assert sum(stage.token_share for stage in stages) == pytest.approx(1.0)


def test_single_layer_cut_happens_in_the_first_depth_stage():
    """With one layer to drop, depth_first drops it in stage 1 (half is rounded up)."""
    teacher, final = Shape(4, 128, 16, 4), Shape(3, 96, 8, 3)
    first, second = plans.get("depth_first")(teacher, final)
    assert first.shape == Shape(3, 128, 16, 4) and second.shape == final


def test_unknown_plan_lists_valid_keys():
    """A typo names the field and lists the plans."""
    with pytest.raises(UserError, match=r"distill.plan: unknown progressive plan 'depth_frist'.*depth_first"):
        plans.validate("depth_frist", "distill.plan")
