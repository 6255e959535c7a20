"""`run_calibration`: the calibration stage as `slim calibrate` and `slim compress` run it."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Subset
from transformers import PreTrainedModel

from harness.calibration.collect import calibrate, check_calibration_config
from harness.calibration.layerwise import calibrate_layerwise, placed_on
from harness.calibration.stats import CalibrationStats
from harness.config.schema import CalibrationConfig, DataConfig
from harness.data.packing import PackedDataset, build_corpus_data

logger = logging.getLogger(__name__)


def calibration_batches(dataset: PackedDataset, cfg: CalibrationConfig) -> list[torch.Tensor]:
    """Input ids [B, S] of the first `cfg.num_samples` sequences (all, with a warning, if there are fewer)."""
    if len(dataset) < cfg.num_samples:
        logger.warning("calibration.num_samples: %d requested, but the calibration split holds %d sequences; "
                       "using all of them", cfg.num_samples, len(dataset))
    subset = Subset(dataset, range(min(cfg.num_samples, len(dataset))))
    return [batch["input_ids"] for batch in DataLoader(subset, batch_size=cfg.batch_size, shuffle=False)]


def run_calibration(model: PreTrainedModel, data_cfg: DataConfig, calib_cfg: CalibrationConfig) -> CalibrationStats:
    """Calibrate `model` on the calibration split; the model ends where it started.

    layerwise: one decoder block at a time on `calibration.device`; otherwise the whole model moves there.
    """
    check_calibration_config(calib_cfg)
    batches = calibration_batches(build_corpus_data(data_cfg).calibration, calib_cfg)
    if calib_cfg.layerwise:
        return calibrate_layerwise(model, batches, calib_cfg)
    with placed_on(model, torch.device(calib_cfg.device)):
        return calibrate(model, batches, calib_cfg)
