"""Checkpoints that nest their language model in a multimodal config, as Qwen3.5-MoE's release does: config.json of
model type `qwen3_5_moe` holds `text_config` and `vision_config`; the weights are `model.language_model.*`,
`model.visual.*` and `lm_head.*`.

The harness computes on the language model alone. Reading such a directory gives its text config, which remembers
the directory (`NESTED_SOURCE`); transformers' own key mapping loads `model.language_model.*` as the causal LM's
`model.*` and leaves the tower aside. Writing a model whose config remembers a source puts it back in that layout:
the source's config.json with the model's text config, the model's tensors under the language-model prefix, and
every tensor of the source that is neither the language model nor its MTP layers (the vision tower) copied
unchanged, as a shard of its own. Plain transformers then loads the student as the multimodal model or as a causal
LM. A portable student (an architecture of its own, slim.harness.models.portable) has no multimodal class to nest
in, so it is written as the language model alone, and a warning line says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, PretrainedConfig

from slim.harness.verbosity import note

NESTED_SOURCE = "slim_nested_source"  # config attribute: the nested directory a language model was read from
LANGUAGE_PREFIX = "model.language_model."
LANGUAGE_MODEL_KEYS = ("model.language_model.", "lm_head.", "mtp.")  # what the written student replaces
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
REST = "model-nested-rest.safetensors"


def text_model_type(data: dict[str, Any]) -> str | None:
    """The model type of the language model a config.json's dict nests, or None when it nests none."""
    text = data.get("text_config")
    return text.get("model_type") if isinstance(text, dict) else None


def read_text_config(path: str | Path) -> PretrainedConfig:
    """The language model's config of nested directory `path`, remembering `path` for writing back."""
    config = AutoConfig.from_pretrained(path).get_text_config()
    setattr(config, NESTED_SOURCE, str(Path(path).resolve()))
    return config


def _weight_files(directory: Path) -> list[str]:
    index = directory / INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [SINGLE]


def _rest_of_source(source: Path) -> dict[str, Any]:
    """Every tensor of the source checkpoint the language model does not own, unchanged."""
    rest = {}
    for name in _weight_files(source):
        with safe_open(source / name, framework="pt") as handle:
            rest.update({key: handle.get_tensor(key) for key in handle.keys()
                         if not key.startswith(LANGUAGE_MODEL_KEYS)})
    return rest


def _nested_key(key: str) -> str:
    """A language-model tensor's name in the nested layout (transformers may have written it so already, when the
    model was loaded from one: its key mapping runs in reverse on save)."""
    if key.startswith("model.") and not key.startswith(LANGUAGE_PREFIX):
        return LANGUAGE_PREFIX + key.removeprefix("model.")
    return key


def _flat_key(key: str) -> str:
    """A language-model tensor's name in a causal LM's own layout."""
    return "model." + key.removeprefix(LANGUAGE_PREFIX) if key.startswith(LANGUAGE_PREFIX) else key


def _rename_shards(directory: Path, rename: Callable[[str], str], extra_shards: int) -> dict[str, str]:
    """Rewrite the weight files of `directory` with every tensor renamed, as shards numbered for `extra_shards` more
    files to come; returns tensor -> shard."""
    weight_map: dict[str, str] = {}
    files = _weight_files(directory)
    for number, name in enumerate(files, start=1):
        tensors = {rename(key): tensor for key, tensor in load_file(directory / name).items()}
        (directory / name).unlink()
        shard = f"model-{number:05d}-of-{len(files) + extra_shards:05d}.safetensors"
        save_file(tensors, directory / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
    return weight_map


def _write_index(directory: Path, weight_map: dict[str, str]) -> None:
    (directory / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))},
                                              indent=2) + "\n")


def write_nested(config: PretrainedConfig, directory: Path) -> None:
    """Put the language model saved in `directory` back into the layout of the nested checkpoint its config was read
    from (see the module docstring); nothing to do for a model that was not read from one."""
    source = getattr(config, NESTED_SOURCE, None)
    if source is None:
        return
    config_file = directory / "config.json"
    text = json.loads(config_file.read_text())
    text.pop(NESTED_SOURCE, None)
    if "auto_map" in text:
        _write_index(directory, _rename_shards(directory, _flat_key, 0))
        config_file.write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")
        note(f"{directory.name}: a portable student is written as its language model alone; the vision tower of "
             f"{source} is not nested with it (its multimodal class cannot build per-layer expert counts or variants)")
        return
    source = Path(source)
    weight_map = _rename_shards(directory, _nested_key, 1)
    rest = _rest_of_source(source)
    save_file(rest, directory / REST, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, REST))
    _write_index(directory, weight_map)
    outer = json.loads((source / "config.json").read_text())
    outer["text_config"] = text
    config_file.write_text(json.dumps(outer, indent=2, sort_keys=True) + "\n")
