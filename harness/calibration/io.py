"""Calibration statistics on disk: one safetensors file, tensors by name, counts and fingerprint as metadata.

Layout: tensors `moe.<layer>.<sum>`, `norm.<norm name>`, `depth.<sum>`; metadata (strings)
`format`, `fingerprint`, `tokenizer_fingerprint`, `data_fingerprint` (JSON), `num_layers`,
`moe.<layer>.num_tokens`, `moe.<layer>.probe_tokens`, `norm_tokens.<norm name>`, `depth.num_tokens`,
`depth.num_sequences`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from slim.harness.atomic import save_safetensors_atomic
from slim.harness.calibration.fingerprint import calibration_data, model_fingerprint, tokenizer_sha256
from slim.harness.calibration.stats import CalibrationStats, DepthStats, MoELayerStats
from slim.harness.config.schema import SlimConfig
from slim.harness.data.tokenizer import load_tokenizer
from slim.harness.errors import UserError

FORMAT = "slim-calibration-stats/1"
MOE_COUNTS = ("num_tokens", "probe_tokens")
MOE_SUMS = tuple(f.name for f in fields(MoELayerStats) if f.name not in MOE_COUNTS)
DEPTH_COUNTS = ("num_tokens", "num_sequences")
DEPTH_SUMS = tuple(f.name for f in fields(DepthStats) if f.name not in DEPTH_COUNTS)


def _flatten(stats: CalibrationStats) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    metadata = {"format": FORMAT, "fingerprint": stats.fingerprint, "num_layers": str(stats.num_layers),
                "tokenizer_fingerprint": stats.tokenizer_fingerprint,
                "data_fingerprint": json.dumps(stats.data_fingerprint, sort_keys=True)}
    for layer, moe in stats.moe.items():
        tensors.update({f"moe.{layer}.{name}": getattr(moe, name) for name in MOE_SUMS})
        metadata.update({f"moe.{layer}.{name}": str(getattr(moe, name)) for name in MOE_COUNTS})
    for name, abs_sum in stats.norm_abs_sum.items():
        tensors[f"norm.{name}"] = abs_sum
        metadata[f"norm_tokens.{name}"] = str(stats.norm_tokens[name])
    if stats.depth is not None:
        tensors.update({f"depth.{name}": getattr(stats.depth, name) for name in DEPTH_SUMS})
        metadata.update({f"depth.{name}": str(getattr(stats.depth, name)) for name in DEPTH_COUNTS})
    return {key: tensor.detach().cpu().contiguous() for key, tensor in tensors.items()}, metadata


def stats_bytes(teacher: PreTrainedModel) -> int:
    """About the bytes `save_stats` writes for `teacher` (built on the meta device is enough): float64 sums, per MoE
    layer the [E, E] router gram and [E, hidden] probe outputs plus four [E] scores, and every RMSNorm's weight."""
    from slim.harness.models.view import view

    model_view = view(teacher)
    hidden = teacher.config.hidden_size
    experts = sum(layer.moe.num_experts * (layer.moe.num_experts + hidden + len(MOE_SUMS))
                  for layer in model_view.moe_layers())
    norms = sum(norm.weight.numel() for _, norm in model_view.all_norms())
    return 8 * (experts + norms + 2 * len(model_view.layers))


def save_stats(stats: CalibrationStats, path: str | Path) -> Path:
    """Write `stats` to `path` through a temp file and a rename: a killed run never leaves a partial file."""
    tensors, metadata = _flatten(stats)
    return save_safetensors_atomic(tensors, path, metadata)


def _unflatten(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> CalibrationStats:
    """Rebuild the dataclasses; a missing key or a non-integer count raises KeyError/ValueError."""
    moe_layers = sorted({int(key.split(".")[1]) for key in tensors if key.startswith("moe.")})
    moe = {
        layer: MoELayerStats(
            **{name: tensors[f"moe.{layer}.{name}"] for name in MOE_SUMS},
            **{name: int(metadata[f"moe.{layer}.{name}"]) for name in MOE_COUNTS},
        )
        for layer in moe_layers
    }
    norm_names = [key.removeprefix("norm.") for key in tensors if key.startswith("norm.")]
    depth = None
    if any(key.startswith("depth.") for key in tensors):
        depth = DepthStats(**{name: tensors[f"depth.{name}"] for name in DEPTH_SUMS},
                           **{name: int(metadata[f"depth.{name}"]) for name in DEPTH_COUNTS})
    return CalibrationStats(
        fingerprint=metadata["fingerprint"],
        num_layers=int(metadata["num_layers"]),
        moe=moe,
        norm_abs_sum={name: tensors[f"norm.{name}"] for name in norm_names},
        norm_tokens={name: int(metadata[f"norm_tokens.{name}"]) for name in norm_names},
        depth=depth,
        # Files written before these were recorded have neither: they match no config, so compress refuses them.
        tokenizer_fingerprint=metadata.get("tokenizer_fingerprint", ""),
        data_fingerprint=json.loads(metadata.get("data_fingerprint", "{}")),
    )


def load_stats(path: str | Path) -> CalibrationStats:
    """Statistics written by `save_stats`; a missing, corrupt or foreign file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration stats {path}: no such file (run `slim calibrate` first)")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error type for every corruption
        raise UserError(f"calibration stats {path}: unreadable safetensors file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise UserError(f"calibration stats {path}: not a calibration stats file "
                        f"(format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        return _unflatten(tensors, metadata)
    except (KeyError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise UserError(f"calibration stats {path}: incomplete or malformed entry {error}") from error


def check_fingerprint(stats: CalibrationStats, model: PreTrainedModel, path: str | Path = "the statistics") -> None:
    """One-line UserError unless `stats` were collected on this very model (same config and weights)."""
    expected = model_fingerprint(model)
    if stats.fingerprint != expected:
        raise UserError(f"compress.stats: fingerprint {stats.fingerprint[:12]} of {path} does not match the model "
                        f"({expected[:12]}); recalibrate with `slim calibrate`")


def check_stats_data(stats: CalibrationStats, cfg: SlimConfig, path: str | Path) -> None:
    """One-line UserError unless `stats` were collected on the calibration text `cfg` describes (corpus, split,
    seq_len, samples), tokenized by the tokenizer at data.tokenizer: what compressing with this config
    would calibrate on. Cheap (no model), so it runs before the teacher is loaded."""
    expected = calibration_data(cfg.data, cfg.calibration)
    if stats.data_fingerprint != expected:
        differing = [f"{key} {stats.data_fingerprint.get(key, 'unrecorded')} vs {value}"
                     for key, value in expected.items() if stats.data_fingerprint.get(key) != value]
        raise UserError(f"compress.stats: {path} was calibrated on other data than this config "
                        f"({'; '.join(differing)}); recalibrate with `slim calibrate` and this config")
    tokenizer = tokenizer_sha256(load_tokenizer(cfg.data.tokenizer))
    if stats.tokenizer_fingerprint != tokenizer:
        raise UserError(f"compress.stats: {path} was calibrated with another tokenizer "
                        f"({stats.tokenizer_fingerprint[:12] or 'unrecorded'}) than data.tokenizer "
                        f"{cfg.data.tokenizer} ({tokenizer[:12]}); recalibrate with `slim calibrate`")
