"""`depth_first_3` (Appendix A.5): half the depth cut, the other half, then the width cut."""

from dataclasses import replace

from slim.harness.progressive_plans import Shape, Stage, halfway_layers, plans


@plans.register("depth_first_3")
def depth_first_3(teacher: Shape, final: Shape, first_share: float = 0.1) -> list[Stage]:
    """Three stages: half depth (share/2), full depth (share/2), then width (the rest; paper 20B/20B/360B)."""
    half = replace(teacher, num_layers=halfway_layers(teacher, final))
    full_depth = replace(teacher, num_layers=final.num_layers)
    return [Stage(half, first_share / 2), Stage(full_depth, first_share / 2), Stage(final, 1.0 - first_share)]
