"""`one_shot`: compress straight to the target, then distill on the whole budget."""

from slim.harness.progressive_plans import Shape, Stage, plans


@plans.register("one_shot")
def one_shot(teacher: Shape, final: Shape, first_share: float = 0.1) -> list[Stage]:
    """Compress to the final shape at once and train on 100% of the tokens (Table 5 baseline)."""
    return [Stage(final, 1.0)]
