"""The scratch baseline of SlimQwen Table 1: the student's exact architecture, randomly initialized."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from slim.harness.models.io import load_pretrained, save_pretrained


def reinitialize_(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Re-draw every parameter with the family's own init (in place). transformers marks loaded weights as
    initialized and then skips them, so the marks are cleared first."""
    for item in [*model.modules(), *model.parameters()]:
        item._is_hf_initialized = False
    torch.manual_seed(seed)
    model.apply(model._init_weights)
    return model


def write_scratch_student(student_dir: str | Path, out_dir: str | Path, seed: int) -> Path:
    """Copy of `student_dir` (same config, per-layer expert counts and tokenizer) with random weights."""
    model, tokenizer = load_pretrained(student_dir)
    return save_pretrained(reinitialize_(model, seed), out_dir, tokenizer=tokenizer)
