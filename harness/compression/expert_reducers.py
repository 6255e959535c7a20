"""Expert reducers: `(importance [E], similarity [E, E] | None, num_keep, **options) -> ExpertPlan`.

Groups come out ordered by their kept/base expert's original id, so keeping every expert is the
identity plan. Options are keyword-only parameters of the reducer that declares them.
"""

from __future__ import annotations

from collections.abc import Callable

from slim.harness.compression.plan import ExpertPlan
from slim.harness.registry import Registry

Reducer = Callable[..., ExpertPlan]

reducers: Registry[Reducer] = Registry.of_group("slim.expert_reducers")
