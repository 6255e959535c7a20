"""`joint`: half of both the depth and the width cut first, the other halves second."""

from dataclasses import replace

from slim.harness.progressive_plans import Shape, Stage, halfway_hidden, halfway_layers, plans


@plans.register("joint")
def joint(teacher: Shape, final: Shape, first_share: float = 0.1) -> list[Stage]:
    """Stage 1: half the layer and half the width reduction; stage 2: final shape."""
    first = replace(teacher, num_layers=halfway_layers(teacher, final), hidden_size=halfway_hidden(teacher, final))
    return [Stage(first, first_share), Stage(final, 1.0 - first_share)]
