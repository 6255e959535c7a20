"""Teacher-only metrics computed once: the frozen teacher's validation perplexity is the same number in every grid
cell, progressive stage, adaptation stage and search trial that reads the same teacher and data, so it is stored in a
small JSON file per key under `$SLIM_CACHE_DIR/teacher_metrics` (default `$XDG_CACHE_HOME/slim`, else
`~/.cache/slim`; never inside the teacher's directory) and reused on an exact key match only.

The key names everything the number depends on:
- the teacher: the sha256 of the files it is loaded from (config, weights, index). `model_fingerprint` would
  hash every loaded tensor, i.e. read a 160 GB teacher at every run; the files a model is loaded from determine
  its weights just as exactly. Each file's content hash is itself stored, beside the metrics, with the file's
  (size, mtime_ns, ctime_ns, inode) and rehashed whenever one of them differs: any write or replacement changes
  mtime or ctime (and a rename-over the inode), and ctime cannot be set back from user space (utime sets only
  mtime), so the stat tuple stands for the content (git's index and make rely on the same, with less);
- how it runs: its resolved config, parameter dtype, device type, attention / experts implementation, whether
  its blocks are compiled, and the torch and transformers versions;
- the data and evaluation: the sha256 of the packed validation sequences (corpus, split, tokenizer and seq_len
  in one), the batch size, the number of batches and the number of processes the sampler splits them over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedModel

from slim.harness.atomic import write_text_atomic
from slim.harness.calibration.fingerprint import config_json
from slim.harness.data.packing import file_sha256, sequences_sha256
from slim.harness.evaluation.perplexity import model_perplexity
from slim.harness.models.weight_files import INDEX_FILE, weight_files

CACHE_ENV = "SLIM_CACHE_DIR"
STORE_VERSION = 1

# Every rank must take the same branch (hit or compute): under several processes the caller passes a broadcast of
# rank 0's lookup (e.g. Lightning's `strategy.broadcast`); in one process it is the identity.
Broadcast = Callable[[float | None], float | None]


def cache_root() -> Path:
    """$SLIM_CACHE_DIR, else $XDG_CACHE_HOME/slim, else ~/.cache/slim."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slim"


def _stat_record(path: Path) -> dict[str, int | str]:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino}


def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`; None when missing or unreadable (a torn or foreign file is recomputed)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cached_file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, rehashed only when its (size, mtime_ns, ctime_ns, inode) changed since the last
    hash (module docstring)."""
    path = Path(path).resolve()
    store = cache_root() / "file_digests" / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"
    record = _stat_record(path)
    stored = _read_json(store)
    if stored is not None and {key: stored.get(key) for key in record} == record and "sha256" in stored:
        return stored["sha256"]
    digest = file_sha256(str(path))
    write_text_atomic(store, json.dumps({**record, "sha256": digest}))
    return digest


def teacher_files_digest(teacher_dir: str | Path) -> dict[str, str]:
    """File name -> content sha256 of the files the teacher is loaded from: config.json, the weight index when
    sharded, and the weight files (not the tokenizer or a packed-data cache that may sit beside them)."""
    directory = Path(teacher_dir)
    index = directory / INDEX_FILE
    files = {directory / "config.json", *weight_files(directory).values(), *([index] if index.is_file() else [])}
    return {path.name: cached_file_sha256(path) for path in sorted(files)}


def runtime_key(model: PreTrainedModel) -> dict[str, str | bool | None]:
    """How `model` computes: config, dtype, device type, implementations, compilation and library versions."""
    parameter = next(model.parameters())
    return {"config": config_json(model), "dtype": str(parameter.dtype), "device": parameter.device.type,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "experts_implementation": getattr(model.config, "_experts_implementation", None),
            "compiled": any(getattr(module, "_compiled_call_impl", None) is not None for module in model.modules()),
            "torch": torch.__version__, "transformers": transformers.__version__}


def loader_key(loader: DataLoader, max_batches: int | None) -> dict[str, str | int]:
    """The batches `loader` yields (a PackedDataset in order, possibly split over processes) up to `max_batches`."""
    sampler = loader.sampler
    processes = sampler.num_replicas if isinstance(sampler, DistributedSampler) else 1
    num_batches = len(loader) if max_batches is None else min(max_batches, len(loader))
    return {"sequences_sha256": sequences_sha256(loader.dataset), "batch_size": loader.batch_size,
            "num_batches": num_batches, "processes": processes}


def _store_path(key: dict) -> Path:
    payload = json.dumps(key, sort_keys=True)
    return cache_root() / "teacher_metrics" / f"{hashlib.sha256(payload.encode()).hexdigest()}.json"


def cached_metric(key: dict, compute: Callable[[], float], broadcast: Broadcast = lambda value: value) -> float:
    """The value stored under exactly `key` (the stored key is compared, not only its hash), else `compute()`
    stored atomically under it."""
    path = _store_path(key)
    stored = _read_json(path)
    found = stored["value"] if stored is not None and stored.get("key") == key and "value" in stored else None
    found = broadcast(found)
    if found is not None:
        return float(found)
    value = compute()
    write_text_atomic(path, json.dumps({"key": key, "value": value}, indent=2))
    return value


def teacher_perplexity(teacher_dir: str | Path, model: PreTrainedModel, loader: DataLoader,
                       max_batches: int | None = None, broadcast: Broadcast = lambda value: value) -> float:
    """`model_perplexity` of the teacher loaded from `teacher_dir` over `loader`, computed once per key."""
    key = {"metric": "val_perplexity", "version": STORE_VERSION, "teacher_files": teacher_files_digest(teacher_dir),
           "runtime": runtime_key(model), "data": loader_key(loader, max_batches)}
    return cached_metric(key, lambda: model_perplexity(model, loader, max_batches,
                                                       desc="teacher validation perplexity"), broadcast)
