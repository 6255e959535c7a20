"""`slim run recipe.yaml`: calibrate -> compress -> (scratch re-init) -> distill -> save, in one command."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from harness.compression.compress import compress
from harness.compression.scratch import write_scratch_student
from harness.config.schema import SlimConfig
from harness.training.distill import distill, validate_distill_config


def run_recipe(cfg: SlimConfig) -> dict:
    """One-shot SlimQwen run: the compressed student (or, with distill.init=scratch, its random-init twin)
    is distilled from the original teacher; returns and writes `<run_dir>/run_summary.json`."""
    validate_distill_config(cfg)
    cfg.distill.teacher = cfg.compress.teacher
    report = compress(cfg)
    student = Path(cfg.compress.output)
    if cfg.distill.init == "scratch":
        student = write_scratch_student(student, student.with_name(f"{student.name}-scratch"), cfg.train.seed)
    cfg.distill.student = str(student)
    summary = {"init": cfg.distill.init, "params": report["params"], "distill": asdict(distill(cfg))}
    (Path(cfg.run_dir) / "run_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
