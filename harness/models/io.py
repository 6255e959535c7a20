"""Hugging Face model directories: atomic save, validated load with one-line errors naming the path."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from slim.harness.atomic import give_plain_modes, swap_in
from slim.harness.errors import UserError
from slim.harness.models import nested, portable
from slim.harness.models.families import model_families, prepare_decoding
from slim.harness.models.linear_attention_path import install_device_dispatch
from slim.harness.models.quantized import check_quantization, dequantizing_kwargs
from slim.harness.outputs import check_output_dir, mark

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def save_pretrained(
    model: PreTrainedModel,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write config.json, model.safetensors and tokenizer files to `out_dir`, all or nothing; a model its family's
    stock transformers class cannot build is written as a portable architecture with its modeling code
    (slim.harness.models.portable).

    Everything goes to the sibling `<out_dir>.tmp-<pid>` first (removed again when writing fails, a full disk
    included), marked as harness-made, then replaces `out_dir`: only an absent, empty or harness-made one
    (slim.harness.outputs), never a directory of other files. A killed run leaves the previous directory (or none),
    never a partial one. `extras(tmp_dir)` may add files (MTP weights, reports) inside the same swap.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "output directory")
    tmp_dir = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        model.save_pretrained(tmp_dir)
        portable.write_portable(model.config, tmp_dir)
        nested.write_nested(model.config, tmp_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir)
        if extras is not None:
            extras(tmp_dir)
        give_plain_modes(tmp_dir)
        mark(tmp_dir)
    except BaseException as error:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(error, OSError):
            raise UserError(f"output directory {out_dir}: cannot write the model ({error.strerror or error}); "
                            "nothing was replaced") from error
        raise
    swap_in(tmp_dir, out_dir, out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}"))
    return out_dir


def _nests_language_model(data: dict) -> bool:
    """Whether a config.json's dict is no family itself but nests the language model of one
    (slim.harness.models.nested)."""
    own = portable.family_of(str(data.get("model_type")))
    return nested.text_model_type(data) is not None and own not in model_families.keys()


def _language_model_type(data: dict) -> str:
    """The family a config.json's dict is read as: the nested language model's, or its own model type (a portable
    one's stock family)."""
    if _nests_language_model(data):
        return nested.text_model_type(data)
    return portable.family_of(str(data.get("model_type")))


def read_config(path: str | Path) -> PretrainedConfig:
    """The config the harness builds the model of directory `path` from: a nested checkpoint's language model's, else
    the stock config of its family (slim.harness.models.portable.read_config)."""
    if _nests_language_model(json.loads((Path(path) / "config.json").read_text())):
        return nested.read_text_config(path)
    return portable.read_config(path)


def read_model_config(path: str | Path, field: str) -> PretrainedConfig:
    """The config.json of model directory `path` only (no weights): enough to validate a recipe before
    any work; one-line UserError naming `field` when there is no model directory."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{field}: no Hugging Face model directory at {path} (config.json missing)")
    check_quantization(json.loads((Path(path) / "config.json").read_text()), f"{field}: checkpoint {path}")
    return read_config(path)


def has_tokenizer(path: str | Path) -> bool:
    """Whether model directory `path` holds tokenizer files."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def tokenizer_vocab(path: str | Path, field: str) -> dict[str, int]:
    """token -> id of the tokenizer saved in model directory `path`; refused when it has none (token ids are
    compared between models, so each needs its own)."""
    if not has_tokenizer(path):
        raise UserError(f"{field}: no tokenizer files in {path}; token ids are compared, so the model needs its own")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False).get_vocab()


def _check_weights(path: Path, label: str) -> None:
    """Open every safetensors header so a truncated or corrupt file fails here, naming it."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{label} {path}: no *.safetensors weights found")
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own error type for every corruption
            raise UserError(f"{label} {file}: unreadable weights ({error})") from error


def check_checkpoint(path: str | Path, field: str = "") -> None:
    """Fail before loading on a missing directory, config.json, unsupported family or corrupt weights; the
    one-line error names `field` when given (e.g. eval.teacher)."""
    path, label = Path(path), f"{field}: checkpoint" if field else "checkpoint"
    if not path.is_dir():
        raise UserError(f"{label} {path}: no such directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{label} {path}: no config.json, not a Hugging Face model directory")
    try:
        data = json.loads(config_file.read_text())
        family = _language_model_type(data)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise UserError(f"{label} {config_file}: not a JSON object ({error})") from error
    model_families.validate(family, f"{label} {config_file} model_type")
    check_quantization(data, f"{label} {path}")
    _check_weights(path, label)


def _own_cpu_memory(model: PreTrainedModel) -> None:
    """Copy CPU weights out of the safetensors memory map into fresh, 64-byte aligned allocations.

    Mapped tensors sit at unaligned file offsets, and CPU matmul kernels round differently there
    (logits off by ~1e-7); owned copies make reloaded logits equal the saved model's bit for bit.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()


def _model_class(path: Path) -> tuple[type[PreTrainedModel], PretrainedConfig]:
    """The causal-LM class that builds the model of directory `path` (slim.harness.models.portable.model_class) and
    the stock config it is built from."""
    config = read_config(path)
    return portable.model_class(config), config


def empty_model(path: str | Path) -> PreTrainedModel:
    """The model of directory `path` built from its config.json alone on the meta device (no memory; the
    weights are neither read nor initialized), with the class and dtype `load_pretrained` gives it: the
    skeleton that sharded loading (slim.harness.training.sharded_load) shards and then fills."""
    path = Path(path)
    check_checkpoint(path)
    install_device_dispatch()
    try:
        model_class, config = _model_class(path)
        with torch.device("meta"):
            return model_class._from_config(config)
    except ValueError as error:
        raise UserError(f"checkpoint {path}: cannot build ({error})") from error


def load_pretrained(path: str | Path, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a model directory written by `save_pretrained` (or any supported HF checkpoint) onto `device`,
    with its tokenizer when the directory has one, ready to decode with a cache (`prepare_decoding`: a
    depth-pruned Qwen3-Next without attention layers too). Missing or mismatched weights are an error, never
    silently re-initialized. A quantized release (FP8, MXFP4) is dequantized to bf16 as it loads
    (slim.harness.models.quantized)."""
    path = Path(path)
    check_checkpoint(path)
    install_device_dispatch()
    try:
        model_class, config = _model_class(path)
        dequantize = dequantizing_kwargs(json.loads((path / "config.json").read_text()))
        model, info = model_class.from_pretrained(path, config=config, device_map=device, output_loading_info=True,
                                                  **dequantize)
    except (OSError, ValueError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"checkpoint {path}: cannot load ({first_line})") from error
    # transformers raises on shape mismatches but only warns on missing tensors, then initializes them randomly.
    if info["missing_keys"]:
        raise UserError(f"checkpoint {path}: missing_keys {sorted(info['missing_keys'])} (config.json expects them)")
    _own_cpu_memory(model)
    prepare_decoding(model)
    # The tokenizer is never remote code, but AutoTokenizer reads config.json, whose auto_map (a portable student or
    # adapted model) would otherwise make transformers stop and ask on stdin whether to run the modeling file.
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False) if has_tokenizer(path) else None
    return model, tokenizer
