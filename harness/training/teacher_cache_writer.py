"""`slim cache-teacher`: run the teacher once over the train split and write its top-k targets as the cache that
slim.harness.training.teacher_cache describes and reads. Under torchrun or srun every rank takes every world-th
missing shard; a killed run resumes at the next missing one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from slim.harness.atomic import save_safetensors_atomic
from slim.harness.calibration.fingerprint import model_fingerprint, tokenizer_sha256
from slim.harness.config.schema import SlimConfig
from slim.harness.data.packing import WindowDataset, build_corpus_data, sequences_sha256, window_rows
from slim.harness.distributed import barrier, init_distributed, local_rank, on_rank_zero, rank, world_size
from slim.harness.errors import UserError
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.io import load_pretrained, read_model_config, tokenizer_vocab
from slim.harness.outputs import check_work_dir
from slim.harness.training.distill_terms import backbone_hidden
from slim.harness.training.teacher_cache import (
    FIELD,
    MANIFEST_FILE,
    CacheManifest,
    TeacherTopK,
    first_difference,
    read_manifest,
    shard_path,
    write_manifest,
)
from slim.kernels.kd_loss.chunked import default_chunk_size

TOKENS_PER_SHARD = 1 << 16  # ~25 MB per shard at k = 64: resume loses little, the file count stays small
BYTES_PER_ENTRY = 4 + 2  # int32 id + float16 log-prob


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


def _claim_directory(cache_dir: Path, manifest: CacheManifest) -> None:
    """Write `manifest` into `cache_dir`, refusing a directory that holds another cache's (a resumed run never mixes
    two caches)."""
    if (cache_dir / MANIFEST_FILE).is_file():
        difference = first_difference(read_manifest(cache_dir), manifest, ignore=("teacher",))
        if difference:
            raise UserError(f"{FIELD}: {cache_dir} holds another cache ({difference}); pick another directory or "
                            "delete it")
    write_manifest(cache_dir, manifest)


def write_shards(model: PreTrainedModel, train: WindowDataset, cache_dir: str | Path, manifest: CacheManifest,
                 batch_size: int) -> list[int]:
    """Write every missing shard of `manifest` (rank 0 writes the manifest first); returns the shards written by all
    ranks. Under torchrun or srun each rank writes every world-th missing shard, then all wait for each other."""
    cache_dir = Path(cache_dir)
    on_rank_zero(lambda: _claim_directory(cache_dir, manifest))
    missing = [shard for shard in range(manifest.num_shards) if not shard_path(cache_dir, shard).is_file()]
    mine = missing[rank()::world_size()]
    done = manifest.num_sequences - sum(len(manifest.shard_rows(shard)) for shard in mine)
    with tqdm(total=manifest.num_sequences, initial=done, unit="seq", desc="cache-teacher", disable=rank() != 0) as bar:
        for shard in mine:
            rows = manifest.shard_rows(shard)
            targets = teacher_topk(model, window_rows(train, rows.start, rows.stop)[:, :-1], manifest.top_k, batch_size)
            save_safetensors_atomic({"ids": targets.ids, "logprobs": targets.logprobs}, shard_path(cache_dir, shard),
                                    {"manifest": manifest.digest(), "first_sequence": str(rows.start)})
            bar.update(len(rows))
    barrier()
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
    return vocab_size


def _missing_bytes(cfg: SlimConfig, num_sequences: int) -> int:
    """About what the cache still has to write: every sequence's top-k entries, less the shards already there."""
    written = sum(path.stat().st_size for path in Path(cfg.distill.teacher_cache).glob("shard-*.safetensors"))
    return max(0, num_sequences * cfg.data.seq_len * cfg.distill.teacher_cache_top_k * BYTES_PER_ENTRY - written)


def cache_teacher(cfg: SlimConfig) -> CacheSummary:
    """Write (or finish) the top-k cache of `distill.teacher` over the train split to `distill.teacher_cache`,
    running the teacher in `train.batch_size` sequences on CUDA when available (each rank on its own GPU, taking its
    share of the shards, under torchrun or srun)."""
    vocab_size = _check_writer_config(cfg)
    data = build_corpus_data(cfg.data)
    if data.tokenizer.get_vocab() != tokenizer_vocab(cfg.distill.teacher, "distill.teacher"):
        raise UserError(f"data.tokenizer: the tokenizer at {cfg.data.tokenizer} differs from the teacher's "
                        f"({cfg.distill.teacher}); the corpus must be tokenized the way the teacher was trained")
    check_work_dir(cfg.distill.teacher_cache, FIELD, _missing_bytes(cfg, len(data.train)))
    init_distributed(cuda=torch.cuda.is_available())
    device = f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"
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
