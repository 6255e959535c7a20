"""MoE adaptations: methods that turn a trained MoE into another kind of MoE and train it there (e.g. static
routing -> dynamic routing with zero experts). An entry validates a config before any work and runs it; it is
also a grid cell kind of the same name (harness/grid/cells/adaptation.py) storing the metrics it declares.

An adaptation brings the rest through generic hooks, each in its own files: its options (a dataclass declared with
`slim.harness.config.sections.config_options`), its modeling code (a model variant, slim.harness.models.variants),
its loss terms
and training metrics (a `DistillModule` subclass passed to `slim.harness.training.distill.distill`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slim.harness.config.schema import SlimConfig
from slim.harness.registry import Registry


@dataclass(frozen=True)
class Adaptation:
    """`validate(cfg)` refuses bad input in one line before any work; `run(cfg)` adapts and returns a summary with
    `output_dir` (the adapted model) and every name in `metrics` (floats a grid cell stores); `curves` are the
    per-step metric names (shell-style patterns) its training logs, which a report's curve may plot."""

    doc: str
    validate: Callable[[SlimConfig], None]
    run: Callable[[SlimConfig], dict]
    metrics: tuple[str, ...]
    curves: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.doc)  # what `slim methods` lists


adaptations: Registry[Adaptation] = Registry.of_group("slim.adaptations")
