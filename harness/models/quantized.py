"""Teachers released quantized: DeepSeek-V3's FP8 block-scaled weights and gpt-oss's MXFP4 experts are read by
dequantizing them to bf16 as they load (transformers' own quantization configs, `dequantize=True`, which run on
CPU too); the harness then computes, cuts and saves plain bf16 tensors, so a student carries no quantization
config. Any other quantization is refused in one line, before any work, saying what to convert first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slim.harness.errors import UserError

DEQUANTIZED = ("fp8", "mxfp4")  # the `quant_method`s read by dequantizing (DeepSeek-V3, gpt-oss)


def quant_method(config: Mapping[str, Any]) -> str | None:
    """The `quant_method` of a config.json's dict (a nested language model's own included), None when unquantized."""
    for section in (config, config.get("text_config") or {}):
        quantization = section.get("quantization_config")
        if isinstance(quantization, Mapping):
            return str(quantization.get("quant_method"))
    return None


def check_quantization(config: Mapping[str, Any], label: str) -> None:
    """Refuse a quantization the harness cannot dequantize, in one line naming the checkpoint and the way out."""
    method = quant_method(config)
    if method is not None and method not in DEQUANTIZED:
        raise UserError(f"{label}: weights quantized with {method!r}; slim reads {' and '.join(DEQUANTIZED)} releases "
                        "by dequantizing them to bf16; dequantize this one first (load it in transformers with its "
                        "quantization config's dequantize option, then save_pretrained)")


def check_not_quantized(config: Mapping[str, Any], label: str) -> None:
    """Refuse a quantized checkpoint where weights are read as stored (sharded loading), pointing at the way out."""
    method = quant_method(config)
    if method is not None:
        raise UserError(f"{label}: weights quantized with {method!r} are dequantized by the full load only; sharded "
                        "loading reads the stored tensors, so save a dequantized copy first (load it with "
                        "slim.harness.models.io.load_pretrained, then save_pretrained)")


def dequantizing_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that dequantize a quantized release as it loads; {} for plain weights."""
    method = quant_method(config)
    if method is None:
        return {}
    from transformers import FineGrainedFP8Config, Mxfp4Config

    configs = {"fp8": FineGrainedFP8Config, "mxfp4": Mxfp4Config}
    return {"quantization_config": configs[method](dequantize=True)}
