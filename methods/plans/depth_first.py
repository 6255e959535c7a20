"""`depth_first`: half the layer cut first at full width, then the rest of depth plus all of width."""

from dataclasses import replace

from slim.harness.progressive_plans import Shape, Stage, halfway_layers, plans


@plans.register("depth_first")
def depth_first(teacher: Shape, final: Shape, first_share: float = 0.1) -> list[Stage]:
    """Stage 1: half the layer reduction, full width; stage 2: final shape (SlimQwen's chosen schedule)."""
    first = replace(teacher, num_layers=halfway_layers(teacher, final))
    return [Stage(first, first_share), Stage(final, 1.0 - first_share)]
