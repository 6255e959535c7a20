"""One cell kind per MoE adaptation (methods/adaptations), named like it: the cell runs the
adaptation and stores the metrics it declares, read from the summary its run returns."""

from __future__ import annotations

import functools

from slim.harness.adaptations import adaptations
from slim.harness.config.schema import SlimConfig
from slim.harness.grid.kinds import CellOutput, register_kind


def validate_adaptation_cell(name: str, cfg: SlimConfig) -> None:
    adaptations.get(name).validate(cfg)


def adaptation_cell(name: str, cfg: SlimConfig) -> CellOutput:
    """Adapt; the adapted model is the cell's student, and every stage logs into the cell's run_dir (one curve)."""
    adaptation = adaptations.get(name)
    summary = adaptation.run(cfg)
    return CellOutput(metrics={metric: float(summary[metric]) for metric in adaptation.metrics},
                      artifacts={"run_dir": cfg.run_dir, "student": summary["output_dir"], "metrics": cfg.run_dir})


for _name, _adaptation in adaptations.items():
    register_kind(_name, metrics=_adaptation.metrics, validate=functools.partial(validate_adaptation_cell, _name),
                  curves=_adaptation.curves)(functools.partial(adaptation_cell, _name))
