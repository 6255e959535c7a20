"""`calibrate`: every calibration statistic from one forward pass per batch over the whole model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from slim.harness.calibration.fingerprint import model_fingerprint
from slim.harness.calibration.instrument import StatsCollector
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.config.schema import CalibrationConfig
from slim.harness.errors import UserError
from slim.kernels.grouped_experts import ExpertOutputs, expert_outputs_grouped


def check_calibration_config(cfg: CalibrationConfig) -> None:
    """One-line UserError naming `calibration.<field>` unless every field is usable."""
    for field, minimum in (("num_samples", 1), ("batch_size", 1), ("probe_tokens", 0)):
        value = getattr(cfg, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"calibration.{field}: must be an integer >= {minimum}, got {value!r}")
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"calibration.device: {cfg.device!r} is not a torch device (e.g. 'cpu', 'cuda:0')") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"calibration.device: {cfg.device!r} requested, but no CUDA device is available; use 'cpu'")


@torch.no_grad()
def calibrate(model: PreTrainedModel, batches: Iterable[torch.Tensor], cfg: CalibrationConfig,
              expert_outputs: ExpertOutputs = expert_outputs_grouped) -> CalibrationStats:
    """Run `model` (where it is) once over each batch of input ids [B, S] and collect every statistic.

    The base model runs without the LM head: no statistic needs logits. `expert_outputs` runs the routed
    experts (`slim.kernels.grouped_experts`: grouped GEMMs, or the per-expert loop reference).
    """
    check_calibration_config(cfg)
    fingerprint = model_fingerprint(model)
    device = model.get_input_embeddings().weight.device
    collector = StatsCollector(model, cfg.probe_tokens, expert_outputs)
    with collector.installed():
        for input_ids in tqdm(batches, desc="calibrate", unit="batch", leave=False):
            model.model(input_ids=input_ids.to(device), use_cache=False)
    return collector.stats(fingerprint)
