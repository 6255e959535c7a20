"""One calibration pass per teacher per grid: cells whose kind calibrates `compress.teacher` before compressing
(`CellKind.calibrates`) and name no `compress.stats` get the stats of the first cell that computed them.

The stats live in `<grid output>/calibration/<digest>.safetensors`, beside `<digest>.json` holding the full key:
- the teacher: the content sha256 of the files it is loaded from (slim.harness.evaluation.teacher_metrics: config,
  weight index and weight files, rehashed only when their stat changes), not `model_fingerprint`, which would read every
  tensor of a large teacher in each cell; the stats still carry that fingerprint and compress checks it;
- the calibration config (every field but `output`) and the model runtime's experts implementation;
- the calibration text: `calibration_data` (corpus digest, split, seq_len, sample counts) and the data config.
A 42-cell Table 2 on one teacher thus calibrates once. The first cell computes under an exclusive lock on
`<digest>.lock`, so cells running at once (workers, Slurm jobs on a shared filesystem) wait for it rather than
calibrating again; the key file is written after the stats, so a killed pass is redone. Cell keys do not change:
shared stats are the stats the cell would have computed. Under torchrun or srun all ranks of a cell join its pass
(rank 0 holds the lock and writes).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from slim.harness.atomic import write_text_atomic
from slim.harness.calibration.fingerprint import calibration_data
from slim.harness.calibration.run import calibrate_teacher
from slim.harness.config.schema import SlimConfig
from slim.harness.distributed import init_distributed, on_rank_zero, rank
from slim.harness.evaluation.teacher_metrics import teacher_files_digest

CALIBRATION_DIR = "calibration"
KEY_VERSION = 1


def pass_settings(cfg: SlimConfig) -> dict:
    """The config a calibration pass of `cfg` depends on (every calibration field but `output`, the experts
    implementation, the data config); with the teacher, cells with equal settings share one pass."""
    settings = {name: value for name, value in asdict(cfg.calibration).items() if name != "output"}
    return {"calibration": settings, "experts_implementation": cfg.model_runtime.experts_implementation,
            "data": asdict(cfg.data)}


def calibration_key(cfg: SlimConfig) -> dict:
    """Everything a calibration pass of `cfg` depends on (module docstring): its settings, the teacher's file
    contents and the calibration text."""
    return {"version": KEY_VERSION, "teacher_files": teacher_files_digest(cfg.compress.teacher),
            "text": calibration_data(cfg.data, cfg.calibration), **pass_settings(cfg)}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (waiting for another holder) for the block."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _stored(key_file: Path, stats_file: Path, key: dict) -> bool:
    """Whether `stats_file` holds a finished pass under exactly `key`."""
    try:
        return stats_file.is_file() and json.loads(key_file.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def shared_stats(cfg: SlimConfig, directory: str | Path) -> str:
    """The path of the grid's stats for `cfg`'s teacher, calibration and data, computed here when no cell has yet."""
    key = calibration_key(cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = _digest(key)
    stats_file, key_file = directory / f"{digest}.safetensors", directory / f"{digest}.json"
    init_distributed(cuda=torch.device(cfg.calibration.device).type == "cuda")
    with _exclusive(directory / f"{digest}.lock") if rank() == 0 else nullcontext():
        if not on_rank_zero(lambda: _stored(key_file, stats_file, key)):
            pass_cfg = copy.deepcopy(cfg)
            pass_cfg.calibration.output = str(stats_file)
            calibrate_teacher(pass_cfg)
            on_rank_zero(lambda: write_text_atomic(key_file, json.dumps({"key": key}, indent=2)))
    return str(stats_file)


def with_shared_stats(cfg: SlimConfig, grid_dir: str | Path) -> SlimConfig:
    """A copy of a cell's config whose `compress.stats` is the grid's shared pass (unless it names stats itself)."""
    if cfg.compress.stats:
        return cfg
    shared = copy.deepcopy(cfg)
    shared.compress.stats = shared_stats(cfg, Path(grid_dir) / CALIBRATION_DIR)
    return shared
