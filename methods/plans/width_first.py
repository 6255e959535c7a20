"""`width_first`: half the width cut first at full depth, then the rest of width plus all of depth."""

from dataclasses import replace

from slim.harness.progressive_plans import Shape, Stage, halfway_hidden, plans


@plans.register("width_first")
def width_first(teacher: Shape, final: Shape, first_share: float = 0.1) -> list[Stage]:
    """Stage 1: half the width reduction, all layers; stage 2: final shape."""
    first = replace(teacher, hidden_size=halfway_hidden(teacher, final))
    return [Stage(first, first_share), Stage(final, 1.0 - first_share)]
