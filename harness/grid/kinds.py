"""Cell kinds: what one grid cell does. Each kind registers itself in `harness/grid/cells/<name>.py`.

A kind runs on a resolved SlimConfig and returns final metrics (floats) and artifact paths (run dir,
student dir, metrics CSV dir for curves). Evaluation is a kind like any other, so adding one (e.g. `eval`)
is one new module here and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from slim.harness.config.schema import SlimConfig
from slim.harness.registry import Registry


@dataclass
class CellOutput:
    """What a cell hands to the results store: metrics by name, and artifact paths by role."""

    metrics: dict[str, float]
    artifacts: dict[str, str] = field(default_factory=dict)


def _no_checks(cfg: SlimConfig) -> None:
    """A kind without config checks beyond the schema."""


# Checks the spec's `<task>/<metric>[,<filter>]` metrics against the resolved configs of the kind's cells (raising
# UserError), and returns those that none of these cells evaluates.
TaskMetricCheck = Callable[[list[str], list[SlimConfig]], list[str]]


@dataclass(frozen=True)
class CellKind:
    """`execute(cfg)` runs one cell; `validate(cfg)` refuses bad configs before any cell of the grid runs;
    `metrics` are the names `execute` may report (spec metrics are checked against them); `curves` are the
    per-step metric names its training logs (shell-style patterns), which a report's curve may plot; a kind with
    `task_metrics` also reports `<task>/<metric>[,<filter>]` benchmark scores, checked by it once cells resolve. A
    kind that `calibrates` compress.teacher (with `calibration` on `data`) unless compress.stats is set gets the
    grid's shared stats instead (slim.harness.grid.calibration)."""

    execute: Callable[[SlimConfig], CellOutput]
    metrics: tuple[str, ...]
    validate: Callable[[SlimConfig], None] = _no_checks
    curves: tuple[str, ...] = ()
    task_metrics: TaskMetricCheck | None = None
    calibrates: bool = False


cell_kinds: Registry[CellKind] = Registry.of_group("slim.cell_kinds")


def register_kind(name: str, metrics: tuple[str, ...], validate: Callable[[SlimConfig], None] = _no_checks,
                  curves: tuple[str, ...] = (), task_metrics: TaskMetricCheck | None = None, calibrates: bool = False
                  ) -> Callable[[Callable[[SlimConfig], CellOutput]], Callable[[SlimConfig], CellOutput]]:
    """Decorator: `@register_kind("run", metrics=(...), validate=..., curves=(...))` on the cell function."""

    def decorator(execute: Callable[[SlimConfig], CellOutput]) -> Callable[[SlimConfig], CellOutput]:
        cell_kinds.register(name)(CellKind(execute, tuple(metrics), validate, tuple(curves), task_metrics,
                                           calibrates))
        return execute

    return decorator
