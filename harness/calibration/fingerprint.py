"""A hash that identifies a model's architecture and weights, so stats are never applied to another model.

Every byte of every parameter goes into one streaming sha256: a model changed in a single weight no longer
matches (a sample of values would miss it), and a saved-and-reloaded model gives the same digest. For a real
model this reads each tensor once, about as long as loading it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from slim.harness.config.schema import CalibrationConfig, DataConfig
from slim.harness.data.packing import corpus_sha256
from slim.harness.data.tokenizer import tokenizer_sha256  # noqa: F401 - re-exported: stats and caches stamp it
from slim.harness.models.nested import NESTED_SOURCE

# Config fields that change on save/reload or with the runtime, not with the model itself.
# (The directory a nested checkpoint's language model was read from is where it lies, not what it is.)
VOLATILE_CONFIG_FIELDS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures",
                          NESTED_SOURCE)


def config_json(model: PreTrainedModel) -> str:
    """The model config as canonical JSON (sorted keys) without the volatile fields."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    for key in VOLATILE_CONFIG_FIELDS:
        config.pop(key, None)
    return json.dumps(config, sort_keys=True)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of `tensor` (any dtype) in row-major order, on the CPU."""
    flat = tensor.detach().reshape(-1).contiguous().to("cpu")
    return memoryview(flat.view(torch.uint8).numpy())


def model_fingerprint(model: PreTrainedModel, weights: Mapping[str, torch.Tensor] | None = None) -> str:
    """sha256 hex digest over the canonical config and every parameter's name, dtype, shape and bytes. `weights`
    (parameter name -> tensor, e.g. a checkpoint read for a sharded or meta-device model) supply the dtypes and
    bytes in place of the parameters' own."""
    digest = hashlib.sha256(config_json(model).encode())
    for name, parameter in sorted(model.named_parameters()):
        value = parameter if weights is None else weights[name]
        digest.update(f"{name}:{value.dtype}:{tuple(parameter.shape)}".encode())
        digest.update(tensor_bytes(value))
    return digest.hexdigest()


def calibration_data(data_cfg: DataConfig, calib_cfg: CalibrationConfig) -> dict[str, str | int]:
    """What calibration text a pass reads: the corpus (its bytes, or the prepared shards' digest), its split, the
    sequence length and sample counts."""
    return {"corpus_sha256": corpus_sha256(data_cfg), "heldout_every": data_cfg.heldout_every,
            "seq_len": data_cfg.seq_len, "num_samples": calib_cfg.num_samples, "probe_tokens": calib_cfg.probe_tokens}
