"""The calibration stage as `slim calibrate` and `slim compress` run it: the model's vocabulary checked against
the calibration text's, one pass, and the stats stamped with the tokenizer and data they came from."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from slim.harness.calibration.collect import calibrate, check_calibration_config
from slim.harness.calibration.fingerprint import calibration_data, tokenizer_sha256
from slim.harness.calibration.io import save_stats, stats_bytes
from slim.harness.calibration.layerwise import calibrate_layerwise, placed_on
from slim.harness.calibration.reduce import all_reduce_stats, rank_share
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.config.schema import CalibrationConfig, DataConfig, SlimConfig
from slim.harness.data.packing import WindowDataset, build_corpus_data, check_data
from slim.harness.data.sources import get_source
from slim.harness.data.tokenizer import load_tokenizer, needs_training
from slim.harness.distributed import init_distributed, on_rank_zero
from slim.harness.errors import UserError
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.io import empty_model, has_tokenizer, load_pretrained, read_model_config, tokenizer_vocab
from slim.harness.outputs import check_output_file

logger = logging.getLogger(__name__)


def calibration_batches(dataset: WindowDataset, cfg: CalibrationConfig) -> list[torch.Tensor]:
    """Input ids [B, S] of the first `cfg.num_samples` sequences (all, with a warning, if there are fewer)."""
    if len(dataset) < cfg.num_samples:
        logger.warning("calibration.num_samples: %d requested, but the calibration split holds %d sequences; "
                       "using all of them", cfg.num_samples, len(dataset))
    subset = Subset(dataset, range(min(cfg.num_samples, len(dataset))))
    return [batch["input_ids"] for batch in DataLoader(subset, batch_size=cfg.batch_size, shuffle=False)]


def check_vocab_size(data_cfg: DataConfig, model_config: PretrainedConfig, model_dir: str | Path | None) -> None:
    """Refuse calibration text tokenized for another vocabulary than the model's, from config and tokenizer files
    only (no weights): the data tokenizer's ids must fit the model's vocab_size, and with `model_dir` it must be the
    tokenizer saved there. A tokenizer still to be trained (a source that ships its corpus) will have
    data.vocab_size tokens, which must then be the model's vocab_size."""
    where = f" at {model_dir}" if model_dir else ""
    if needs_training(data_cfg) and get_source(data_cfg).train_texts is not None:
        if data_cfg.vocab_size != model_config.vocab_size:
            raise UserError(f"data.vocab_size: {data_cfg.vocab_size}, but the model{where} has vocab_size "
                            f"{model_config.vocab_size}; calibrate with the tokenizer the model was trained with")
        return
    tokenizer = load_tokenizer(data_cfg.tokenizer)
    ids = max(tokenizer.get_vocab().values()) + 1
    if ids > model_config.vocab_size:
        raise UserError(f"data.tokenizer: the tokenizer at {data_cfg.tokenizer} has {ids} token ids, but the model"
                        f"{where} has vocab_size {model_config.vocab_size}; calibrate with the tokenizer the model was "
                        "trained with")
    if model_dir is not None:
        _check_tokenizer(tokenizer, data_cfg, model_dir)


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase, data_cfg: DataConfig, model_dir: str | Path) -> None:
    """Refuse a data tokenizer whose vocabulary differs from the one saved beside the model (when it has one)."""
    if has_tokenizer(model_dir) and tokenizer.get_vocab() != tokenizer_vocab(model_dir, "compress.teacher"):
        raise UserError(f"data.tokenizer: the tokenizer at {data_cfg.tokenizer} differs from the model's "
                        f"({model_dir}); calibrate with the tokenizer the model was trained with")


def run_calibration(model: PreTrainedModel, data_cfg: DataConfig, calib_cfg: CalibrationConfig,
                    model_dir: str | Path | None = None) -> CalibrationStats:
    """Calibrate `model` on the calibration split; the model ends where it started. `model_dir` (where the
    model was loaded from) adds the check that the data tokenizer is the model's own.

    layerwise: one decoder block at a time on `calibration.device`; otherwise the whole model moves there.
    Under a multi-process launch every rank calls this with the same model: each calibrates its share of the
    batches and all get the statistics of all of them (slim.harness.calibration.reduce).
    """
    check_calibration_config(calib_cfg)
    check_vocab_size(data_cfg, model.config, model_dir)
    corpus = build_corpus_data(data_cfg)
    if model_dir is not None:
        _check_tokenizer(corpus.tokenizer, data_cfg, model_dir)
    batches, share_cfg = rank_share(calibration_batches(corpus.calibration, calib_cfg), calib_cfg)
    if calib_cfg.layerwise:
        stats = calibrate_layerwise(model, batches, share_cfg)
    else:
        with placed_on(model, torch.device(calib_cfg.device)):
            stats = calibrate(model, batches, share_cfg)
    return dataclasses.replace(all_reduce_stats(stats), tokenizer_fingerprint=tokenizer_sha256(corpus.tokenizer),
                               data_fingerprint=calibration_data(data_cfg, calib_cfg))


def calibrate_teacher(cfg: SlimConfig) -> CalibrationStats:
    """`slim calibrate`: calibrate compress.teacher and write calibration.output, every field checked first; under
    torchrun or srun every rank calibrates its share and rank 0 writes."""
    teacher = read_model_config(cfg.compress.teacher, "compress.teacher")
    check_calibration_config(cfg.calibration)
    check_vocab_size(cfg.data, teacher, cfg.compress.teacher)
    check_data(cfg.data)
    check_output_file(cfg.calibration.output, "calibration.output", stats_bytes(empty_model(cfg.compress.teacher)))
    init_distributed(cuda=torch.device(cfg.calibration.device).type == "cuda")
    model, _ = load_pretrained(cfg.compress.teacher)
    apply_experts_policy(cfg.model_runtime.experts_implementation, model, device=cfg.calibration.device)
    stats = run_calibration(model, cfg.data, cfg.calibration, cfg.compress.teacher)
    on_rank_zero(lambda: save_stats(stats, cfg.calibration.output))
    return stats
