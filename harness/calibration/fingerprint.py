"""A short hash that identifies a model's architecture and weights, so stats are never applied to another model.

Hashing every weight would read the whole checkpoint (hundreds of GB for real models); a strided sample of
64 values per tensor is enough to tell apart a model after compression (shapes and config change) or
training (every trained tensor changes), and is identical for a saved-and-reloaded model.
"""

from __future__ import annotations

import hashlib
import json

import torch
from transformers import PreTrainedModel

# Config fields that change on save/reload or with the runtime, not with the model itself.
VOLATILE_CONFIG_FIELDS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures")
SAMPLES_PER_TENSOR = 64


def config_json(model: PreTrainedModel) -> str:
    """The model config as canonical JSON (sorted keys) without the volatile fields."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    for key in VOLATILE_CONFIG_FIELDS:
        config.pop(key, None)
    return json.dumps(config, sort_keys=True)


def tensor_sample(tensor: torch.Tensor) -> bytes:
    """Up to 64 evenly strided values of `tensor` (always including its first) as float32 bytes."""
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
    return flat[::step][:SAMPLES_PER_TENSOR].to(device="cpu", dtype=torch.float32).numpy().tobytes()


def model_fingerprint(model: PreTrainedModel) -> str:
    """sha256 hex digest over the canonical config and every parameter's name, shape and value sample."""
    digest = hashlib.sha256(config_json(model).encode())
    for name, parameter in sorted(model.named_parameters()):
        digest.update(f"{name}:{tuple(parameter.shape)}".encode())
        digest.update(tensor_sample(parameter))
    return digest.hexdigest()
