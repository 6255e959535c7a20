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
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slim.harness.atomic import save_safetensors_atomic, write_text_atomic
from slim.harness.calibration.fingerprint import model_fingerprint, tokenizer_sha256
from slim.harness.config.schema import SlimConfig
from slim.harness.data.packing import WindowDataset, build_corpus_data, sequences_sha256, window_rows
from slim.harness.errors import UserError
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.io import load_pretrained, read_model_config, tokenizer_vocab
from slim.harness.training.distill_terms import backbone_hidden
from slim.harness.training.loss_mixes import loss_mixes
from slim.kernels.kd_loss import KDLoss
from slim.kernels.kd_loss.cached_reference import cached_kd_implementations
from slim.kernels.kd_loss.chunked import default_chunk_size

FIELD = "distill.teacher_cache"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
TOKENS_PER_SHARD = 1 << 16  # ~25 MB per shard at k = 64: resume loses little, the file count stays small
BYTES_PER_ENTRY = 4 + 2  # int32 id + float16 log-prob


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


@dataclass
class CacheSummary:
    """What `slim cache-teacher` reports."""

    cache_dir: str
    top_k: int
    num_sequences: int
    shards_written: int
    num_shards: int
    bytes_per_token: int
    wall_seconds: float
    tokens_per_second: float


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


def _first_difference(found: CacheManifest, expected: CacheManifest, ignore: tuple[str, ...] = ()) -> str | None:
    for item in fields(CacheManifest):
        if item.name not in ignore and getattr(found, item.name) != getattr(expected, item.name):
            return f"{item.name} {getattr(found, item.name)} != {getattr(expected, item.name)}"
    return None


def _write_manifest(cache_dir: Path, manifest: CacheManifest) -> None:
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


@torch.inference_mode()
def teacher_topk(model: PreTrainedModel, input_ids: torch.Tensor, top_k: int, batch_size: int) -> TeacherTopK:
    """Top-k ids and log-probs of the teacher's next-token distribution at every position of input_ids [n, T],
    in batches of `batch_size` sequences and token chunks (the [tokens, V] logits are never all held)."""
    head = model.get_output_embeddings().weight  # [V, d]
    chunk = default_chunk_size(head.shape[1])
    ids, logprobs = [], []
    for batch in input_ids.split(batch_size):
        hidden = backbone_hidden(model, batch.to(head.device)).flatten(0, 1)  # [b * T, d]
        for rows in hidden.split(chunk):
            values, indices = torch.log_softmax((rows @ head.T).float(), dim=-1).topk(top_k, dim=-1)
            ids.append(indices.to(device="cpu", dtype=torch.int32))
            logprobs.append(values.to(device="cpu", dtype=torch.float16))
    shape = (*input_ids.shape, top_k)
    return TeacherTopK(torch.cat(ids).view(shape), torch.cat(logprobs).view(shape))


def write_shards(model: PreTrainedModel, train: WindowDataset, cache_dir: str | Path, manifest: CacheManifest,
                 batch_size: int) -> list[int]:
    """Write every missing shard of `manifest` (the manifest first); returns the shards written.

    A manifest already in `cache_dir` must be this one, so a resumed run never mixes two caches."""
    cache_dir = Path(cache_dir)
    if (cache_dir / MANIFEST_FILE).is_file():
        difference = _first_difference(read_manifest(cache_dir), manifest, ignore=("teacher",))
        if difference:
            raise UserError(f"{FIELD}: {cache_dir} holds another cache ({difference}); pick another directory or "
                            "delete it")
    _write_manifest(cache_dir, manifest)
    missing = [shard for shard in range(manifest.num_shards) if not shard_path(cache_dir, shard).is_file()]
    done = manifest.num_sequences - sum(len(manifest.shard_rows(shard)) for shard in missing)
    with tqdm(total=manifest.num_sequences, initial=done, unit="seq", desc="cache-teacher") as bar:
        for shard in missing:
            rows = manifest.shard_rows(shard)
            targets = teacher_topk(model, window_rows(train, rows.start, rows.stop)[:, :-1], manifest.top_k, batch_size)
            save_safetensors_atomic({"ids": targets.ids, "logprobs": targets.logprobs}, shard_path(cache_dir, shard),
                                    {"manifest": manifest.digest(), "first_sequence": str(rows.start)})
            bar.update(len(rows))
    return missing


def _check_writer_config(cfg: SlimConfig) -> int:
    """Fields `slim cache-teacher` needs, before any model or data is read; returns the teacher's vocab size."""
    distill = cfg.distill
    if not distill.teacher_cache:
        raise UserError(f"{FIELD}: empty; set the directory to write the cache to, e.g. {FIELD}=runs/teacher-cache")
    vocab_size = read_model_config(distill.teacher, "distill.teacher").vocab_size
    if not 1 <= distill.teacher_cache_top_k <= vocab_size:
        raise UserError(f"distill.teacher_cache_top_k: must be in [1, {vocab_size}] (the teacher's vocab_size), "
                        f"got {distill.teacher_cache_top_k}")
    if cfg.train.batch_size < 1:
        raise UserError(f"train.batch_size: must be >= 1, got {cfg.train.batch_size}")
    return vocab_size


def cache_teacher(cfg: SlimConfig) -> CacheSummary:
    """Write (or finish) the top-k cache of `distill.teacher` over the train split to `distill.teacher_cache`,
    running the teacher in `train.batch_size` sequences on CUDA when available."""
    vocab_size = _check_writer_config(cfg)
    data = build_corpus_data(cfg.data)
    if data.tokenizer.get_vocab() != tokenizer_vocab(cfg.distill.teacher, "distill.teacher"):
        raise UserError(f"data.tokenizer: the tokenizer at {cfg.data.tokenizer} differs from the teacher's "
                        f"({cfg.distill.teacher}); the corpus must be tokenized the way the teacher was trained")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_pretrained(cfg.distill.teacher, device=device)
    apply_experts_policy(cfg.model_runtime.experts_implementation, model)
    model.eval()
    manifest = CacheManifest(
        teacher=cfg.distill.teacher, teacher_fingerprint=model_fingerprint(model), vocab_size=vocab_size,
        top_k=cfg.distill.teacher_cache_top_k, seq_len=cfg.data.seq_len, num_sequences=len(data.train),
        sequences_per_shard=max(1, TOKENS_PER_SHARD // cfg.data.seq_len), train_sha256=sequences_sha256(data.train),
        tokenizer_sha256=tokenizer_sha256(data.tokenizer))
    start = time.perf_counter()
    written = write_shards(model, data.train, cfg.distill.teacher_cache, manifest, cfg.train.batch_size)
    wall = time.perf_counter() - start
    tokens = sum(len(manifest.shard_rows(shard)) for shard in written) * manifest.seq_len
    return CacheSummary(cache_dir=cfg.distill.teacher_cache, top_k=manifest.top_k, num_sequences=manifest.num_sequences,
                        shards_written=len(written), num_shards=manifest.num_shards,
                        bytes_per_token=manifest.top_k * BYTES_PER_ENTRY, wall_seconds=round(wall, 2),
                        tokens_per_second=round(tokens / max(wall, 1e-9), 1))
