"""Distributed calibration: each rank calibrates a contiguous share of the batches and the sums are added up.

Every statistic is a sum over tokens or sequences, so the ranks' sums add up to the one-process statistics (floats
up to the order of the float64 additions, counts exactly). A rank's share keeps the one-process batch boundaries,
so each batch runs exactly as it would in one process, and the probe set of `expert_outputs` (the first
`probe_tokens` tokens of the batch stream) is split along with the batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from slim.harness.calibration.io import DEPTH_COUNTS, DEPTH_SUMS, MOE_COUNTS, MOE_SUMS
from slim.harness.calibration.stats import CalibrationStats, DepthStats, MoELayerStats
from slim.harness.config.schema import CalibrationConfig
from slim.harness.distributed import all_reduce_sum, rank, shard, world_size


def rank_share(batches: list[torch.Tensor], cfg: CalibrationConfig) -> tuple[list[torch.Tensor], CalibrationConfig]:
    """This rank's contiguous share of the one-process `batches` (input ids [B, S]), and its config with the probe
    budget left for its share: the global probe tokens that fall in it."""
    mine = shard(len(batches), rank(), world_size())
    tokens_before = sum(batch.numel() for batch in batches[:mine.start])
    probe_tokens = max(0, cfg.probe_tokens - tokens_before)
    return batches[mine.start:mine.stop], dataclasses.replace(cfg, probe_tokens=probe_tokens)


def _summed(stats: CalibrationStats) -> tuple[Iterator[torch.Tensor], Iterator[int]]:
    """Every sum and every count of `stats`, each added over ranks, in the order `all_reduce_stats` reads them."""
    assert stats.depth is not None, "a calibration pass always collects depth statistics"
    layers, norms = list(stats.moe.values()), list(stats.norm_abs_sum)  # the same order on every rank
    sums = [*(getattr(layer, name) for layer in layers for name in MOE_SUMS),
            *(stats.norm_abs_sum[name] for name in norms), *(getattr(stats.depth, name) for name in DEPTH_SUMS)]
    counts = [*(getattr(layer, name) for layer in layers for name in MOE_COUNTS),
              *(stats.norm_tokens[name] for name in norms), *(getattr(stats.depth, name) for name in DEPTH_COUNTS)]
    flat = all_reduce_sum(torch.cat([tensor.reshape(-1).double() for tensor in sums]))
    parts = flat.split([tensor.numel() for tensor in sums])
    totals = all_reduce_sum(torch.tensor(counts, dtype=torch.int64)).tolist()
    return iter([part.view_as(tensor).to(tensor.dtype) for part, tensor in zip(parts, sums, strict=True)]), iter(totals)


def all_reduce_stats(stats: CalibrationStats) -> CalibrationStats:
    """The statistics of all ranks' batches from each rank's own (`stats` itself in one process)."""
    if world_size() == 1:
        return stats
    sums, counts = _summed(stats)
    moe = {index: MoELayerStats(**{name: next(sums) for name in MOE_SUMS},
                                **{name: next(counts) for name in MOE_COUNTS}) for index in stats.moe}
    norms = list(stats.norm_abs_sum)
    norm_abs_sum = {name: next(sums) for name in norms}
    norm_tokens = {name: next(counts) for name in norms}
    depth = DepthStats(**{name: next(sums) for name in DEPTH_SUMS}, **{name: next(counts) for name in DEPTH_COUNTS})
    return dataclasses.replace(stats, moe=moe, norm_abs_sum=norm_abs_sum, norm_tokens=norm_tokens, depth=depth)
