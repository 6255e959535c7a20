"""`width_first_3` (Appendix A.5): half the width cut, the other half, then the depth cut."""

from dataclasses import replace

from slim.harness.progressive_plans import Shape, Stage, halfway_hidden, plans


@plans.register("width_first_3")
def width_first_3(teacher: Shape, final: Shape, first_share: float = 0.1) -> list[Stage]:
    """Three stages: half width (share/2), full width (share/2), then depth (the rest)."""
    half = replace(teacher, hidden_size=halfway_hidden(teacher, final))
    full_width = replace(teacher, hidden_size=final.hidden_size)
    return [Stage(half, first_share / 2), Stage(full_width, first_share / 2), Stage(final, 1.0 - first_share)]
