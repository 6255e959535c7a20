"""Offline teacher cache: the teacher's top-k next-token log-probabilities for every packed train sequence.

`slim cache-teacher` runs the teacher once over the train split; distillation with `distill.teacher_cache`
then reads the `kd` targets from disk instead of running the teacher at every step. Per position it keeps
the k most likely token ids (int32) and their log-probabilities at temperature 1 (float16: its 11-bit
mantissa keeps |log p| < 32 within 0.008 where bfloat16's 8 bits give 0.06; log-probs never leave its
range). The KD loss over the cached support (kernels/kd_loss/cached_reference.py) only uses differences of
these values, so one cache serves every temperature. Backbone (main LM head) targets only: MTP-KD targets
are not cached, so a loss mix with `mtp_kd` is refused.

A cache directory holds `manifest.json` (what it was built from) and shards `shard-00000.safetensors`, ...
of `sequences_per_shard` sequences each ({"ids", "logprobs"}: [n, seq_len, k]), each written atomically;
a killed run resumes at the next missing shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slim.harness.atomic import write_text_atomic
from slim.harness.calibration.fingerprint import model_fingerprint, tokenizer_sha256
from slim.harness.config.schema import SlimConfig
from slim.harness.data.packing import WindowDataset, sequences_sha256
from slim.harness.errors import UserError
from slim.harness.training.loss_mixes import loss_mixes
from slim.kernels.kd_loss import KDLoss
from slim.kernels.kd_loss.cached_reference import cached_kd_implementations

FIELD = "distill.teacher_cache"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CacheManifest:
    """What a cache was built from; a distillation run must match every field but `teacher`."""

    teacher: str  # teacher directory as given (informational: the fingerprint is what is checked)
    teacher_fingerprint: str
    vocab_size: int
    top_k: int
    seq_len: int
    num_sequences: int
    sequences_per_shard: int
    train_sha256: str  # packed train tokens: corpus, split, tokenizer and seq_len in one check
    tokenizer_sha256: str
    version: int = FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return -(-self.num_sequences // self.sequences_per_shard)

    def shard_rows(self, shard: int) -> range:
        start = shard * self.sequences_per_shard
        return range(start, min(start + self.sequences_per_shard, self.num_sequences))

    def digest(self) -> str:
        """Stored in every shard, so a shard of another manifest is never mistaken for one of this cache."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass
class TeacherTopK:
    """Cached targets of a batch: token ids [B, T, k] (int32) and teacher log-probs [B, T, k] (float16)."""

    ids: torch.Tensor
    logprobs: torch.Tensor


def shard_path(cache_dir: str | Path, shard: int) -> Path:
    return Path(cache_dir) / f"shard-{shard:05d}.safetensors"


def read_manifest(cache_dir: str | Path) -> CacheManifest:
    """The manifest of `cache_dir`; a one-line UserError when it is missing or unreadable."""
    path = Path(cache_dir) / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"{FIELD}: no {MANIFEST_FILE} in {cache_dir}; write the cache with `slim cache-teacher`")
    try:
        manifest = CacheManifest(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise UserError(f"{FIELD}: {path} is not a teacher-cache manifest ({error})") from error
    if manifest.version != FORMAT_VERSION:
        raise UserError(f"{FIELD}: {path} has format version {manifest.version}, expected {FORMAT_VERSION}; "
                        "rewrite it with `slim cache-teacher`")
    return manifest


def first_difference(found: CacheManifest, expected: CacheManifest, ignore: tuple[str, ...] = ()) -> str | None:
    for item in fields(CacheManifest):
        if item.name not in ignore and getattr(found, item.name) != getattr(expected, item.name):
            return f"{item.name} {getattr(found, item.name)} != {getattr(expected, item.name)}"
    return None


def write_manifest(cache_dir: Path, manifest: CacheManifest) -> None:
    """manifest.json written atomically (temp file + rename)."""
    write_text_atomic(cache_dir / MANIFEST_FILE, json.dumps(asdict(manifest), indent=2))


def _open_shard(cache_dir: str | Path, shard: int, manifest: CacheManifest):
    """A safetensors handle on one shard, refused when unreadable or written for another manifest."""
    path = shard_path(cache_dir, shard)
    try:
        handle = safe_open(path, framework="pt")
    except (SafetensorError, OSError) as error:
        raise UserError(f"{FIELD}: cannot read {path} ({error}); delete it and rerun `slim cache-teacher`") from error
    if handle.metadata().get("manifest") != manifest.digest():
        raise UserError(f"{FIELD}: {path} was written for another manifest; delete it and rerun `slim cache-teacher`")
    return handle


class TeacherCache:
    """Reader: the cached top-k of any train sequences, by their dataset index."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(cache_dir)
        missing = [shard for shard in range(self.manifest.num_shards) if not shard_path(cache_dir, shard).is_file()]
        if missing:
            raise UserError(f"{FIELD}: {len(missing)} of {self.manifest.num_shards} shards missing in {cache_dir} "
                            f"(first: {shard_path(cache_dir, missing[0]).name}); finish it with `slim cache-teacher`")
        self._handles: dict[int, object] = {}

    def check_teacher(self, teacher: PreTrainedModel, teacher_dir: str,
                      weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Refuse a cache written by another model than `teacher` (config and weights fingerprint; `weights`:
        see `model_fingerprint`)."""
        fingerprint = model_fingerprint(teacher, weights)
        if fingerprint != self.manifest.teacher_fingerprint:
            raise UserError(f"{FIELD}: {self.cache_dir} was written by teacher {self.manifest.teacher} (fingerprint "
                            f"{self.manifest.teacher_fingerprint[:12]}), not by distill.teacher {teacher_dir} "
                            f"({fingerprint[:12]}); rewrite it with `slim cache-teacher`")

    def lookup(self, indices: torch.Tensor) -> TeacherTopK:
        """Entries of the train sequences `indices` [B], read row by row from the memory-mapped shards."""
        m = self.manifest
        ids = torch.empty((indices.numel(), m.seq_len, m.top_k), dtype=torch.int32)
        logprobs = torch.empty((indices.numel(), m.seq_len, m.top_k), dtype=torch.float16)
        for position, index in enumerate(indices.tolist()):
            if not 0 <= index < m.num_sequences:
                raise IndexError(f"sequence {index} is outside the cache's {m.num_sequences} train sequences")
            shard, row = divmod(index, m.sequences_per_shard)
            if shard not in self._handles:
                self._handles[shard] = _open_shard(self.cache_dir, shard, m)
            ids[position] = self._handles[shard].get_slice("ids")[row]
            logprobs[position] = self._handles[shard].get_slice("logprobs")[row]
        return TeacherTopK(ids, logprobs)


def cached_kd_term(kernel: KDLoss, student_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                   targets: TeacherTopK, temperature: float) -> torch.Tensor:
    """Mean KL over the cached support of every position of student hidden states [B, T, d]."""
    device = student_hidden.device
    return kernel(student_hidden.flatten(0, 1), student_head_weight, targets.ids.flatten(0, 1).to(device),
                  targets.logprobs.flatten(0, 1).to(device), temperature)


def check_cache_config(cfg: SlimConfig) -> None:
    """Before anything is loaded: the mix, the kernel key and the manifest's seq_len suit `distill.teacher_cache`."""
    distill = cfg.distill
    if "mtp_kd" in loss_mixes.get(distill.loss, "distill.loss").needs:
        raise UserError(f"distill.loss: {distill.loss!r} has an mtp_kd term but {FIELD} holds backbone targets only; "
                        f"pick a mix without mtp_kd or set {FIELD}=''")
    cached_kd_implementations.validate(distill.kd_kernel, "distill.kd_kernel")
    if distill.temperature != 1.0:
        raise UserError(f"distill.temperature: {FIELD} holds T = 1 log-probs, so its KD runs at 1 only, got "
                        f"{distill.temperature}; set 1 or use the live teacher")
    manifest = read_manifest(distill.teacher_cache)
    if manifest.seq_len != cfg.data.seq_len:
        raise UserError(f"data.seq_len: {cfg.data.seq_len} differs from the {manifest.seq_len} of {FIELD} "
                        f"{distill.teacher_cache}")


def check_cache_data(cache_dir: str, train: WindowDataset, tokenizer: PreTrainedTokenizerBase) -> None:
    """Once the data is packed: the cache covers exactly this train split, tokenized by this tokenizer."""
    manifest = read_manifest(cache_dir)
    if manifest.num_sequences != len(train):
        raise UserError(f"{FIELD}: {cache_dir} caches {manifest.num_sequences} train sequences, the data has "
                        f"{len(train)}; rewrite it with `slim cache-teacher`")
    if manifest.tokenizer_sha256 != tokenizer_sha256(tokenizer):
        raise UserError(f"{FIELD}: {cache_dir} was written with another tokenizer than data.tokenizer's")
    if manifest.train_sha256 != sequences_sha256(train):
        raise UserError(f"{FIELD}: {cache_dir} was written for other train sequences (corpus or split differ); "
                        "rewrite it with `slim cache-teacher`")
