"""Which files of a checkpoint directory hold its weights (torch-free: output checks use it before any import
of torch)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from slim.harness.errors import UserError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def weight_paths(directory: Path) -> set[Path]:
    """The files transformers loads weights from (the index's shards, else model.safetensors), present or not;
    other safetensors in the directory, such as a packed-data cache, are not weights."""
    index = directory / INDEX_FILE
    if index.is_file():
        return {directory / file for file in json.loads(index.read_text())["weight_map"].values()}
    return {directory / WEIGHTS_FILE}


def weight_files(directory: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the file holding it: the index's weight map of a sharded checkpoint, else the
    names in model.safetensors (the files transformers loads)."""
    index = directory / INDEX_FILE
    if index.is_file():
        return {name: directory / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    if not (directory / WEIGHTS_FILE).is_file():
        raise UserError(f"checkpoint {directory}: neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    with safe_open(directory / WEIGHTS_FILE, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), directory / WEIGHTS_FILE)
