"""The statistics half of `slim compress`: compress.stats read and checked, or the teacher calibrated with every
rank under torchrun/srun taking its share of the batches. Returns the teacher only where it will be cut (rank 0)."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from slim.harness.calibration.io import check_stats_data, load_stats
from slim.harness.calibration.run import check_vocab_size, run_calibration
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.config.schema import SlimConfig
from slim.harness.distributed import init_distributed, rank
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.io import load_pretrained

Teacher = tuple[PreTrainedModel, PreTrainedTokenizerBase | None]


def stored_stats(cfg: SlimConfig, teacher_cfg: PretrainedConfig) -> CalibrationStats | None:
    """compress.stats read and checked against this config's calibration data (before the teacher is loaded),
    or None when they are computed on the fly (then the data tokenizer is checked against the teacher's vocabulary)."""
    if not cfg.compress.stats:
        check_vocab_size(cfg.data, teacher_cfg, cfg.compress.teacher)
        return None
    stats = load_stats(cfg.compress.stats)
    check_stats_data(stats, cfg, cfg.compress.stats)
    return stats


def compress_statistics(cfg: SlimConfig, stored: CalibrationStats | None) -> tuple[Teacher | None, CalibrationStats]:
    """(the loaded teacher on rank 0, None elsewhere; the statistics every selection is made on): `stored` when
    given, else a calibration run on all ranks (each loads the teacher for its share, the others drop it after)."""
    recipe = cfg.compress
    init_distributed(cuda=torch.device(cfg.calibration.device).type == "cuda")
    teacher = load_pretrained(recipe.teacher) if stored is None or rank() == 0 else None
    if teacher is not None:
        apply_experts_policy(cfg.model_runtime.experts_implementation, teacher[0], device=cfg.calibration.device)
    stats = run_calibration(teacher[0], cfg.data, cfg.calibration, recipe.teacher) if stored is None else stored
    return (teacher if rank() == 0 else None), stats
