"""MoE adaptations: methods that turn a trained MoE into another kind of MoE and train it there (e.g. `zeda`:
static routing -> dynamic routing with zero experts). An entry validates a config before any work and runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.config.schema import SlimConfig
from harness.registry import Registry


@dataclass(frozen=True)
class Adaptation:
    """`validate(cfg)` refuses bad input in one line before any work; `run(cfg)` adapts and returns a summary."""

    doc: str
    validate: Callable[[SlimConfig], None]
    run: Callable[[SlimConfig], dict]

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.doc)  # what `slim methods` lists


adaptations: Registry[Adaptation] = Registry("MoE adaptation", package="methods.adaptations")
