"""Prefill / decode throughput and peak memory of a causal LM (SlimQwen Table 11 analog).

Prefill: one forward over a [B, P] prompt batch that fills the cache (attention keys and values, Gated
DeltaNet conv and recurrent states; slim.harness.models.families.prepare_decoding gives every model one). Decode:
`generate` of G tokens (greedy, exactly G); its first token comes from the prefill, so decode throughput is
B·(G-1) tokens over (generate time - prefill time). Each is the mean of `repeats` timed runs after `warmup`
untimed ones. Peak memory: on CUDA `torch.cuda.max_memory_allocated` over the timed runs (weights
included); on CPU the model's parameter and buffer bytes plus the peak rise of the process RSS above its
level before the runs, sampled every millisecond by a thread (torch's CPU allocator is invisible to
tracemalloc, so RSS is the measure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch
from transformers import PreTrainedModel

from slim.harness.evaluation.mtp_acceptance import greedy_continuation

CUDA_MEMORY = "cuda_max_memory_allocated"
CPU_MEMORY = "cpu_weights_plus_peak_rss_rise"


@dataclass
class Efficiency:
    """Throughput in tokens/s and peak memory in bytes, with how the memory was measured."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_memory_bytes: int
    memory_method: str


class _PeakRSS:
    """Highest resident set size of this process seen by a sampling thread while running."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


@contextmanager
def _peak_memory(model: PreTrainedModel, device: torch.device) -> Iterator[list[int]]:
    """Yields a one-element list that holds the peak memory in bytes once the block exits."""
    result = [0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result[0] = torch.cuda.max_memory_allocated(device)
        return
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    with _PeakRSS() as rss:
        before = rss.peak
        yield result
    result[0] = weights + rss.peak - before


def mean_seconds(run: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - begin)
    return sum(times) / len(times)


@torch.no_grad()
def measure_efficiency(model: PreTrainedModel, prompts: torch.Tensor, new_tokens: int, repeats: int,
                       warmup: int) -> Efficiency:
    """Prefill and decode throughput and peak memory of `model` on `prompts` [B, P] (on the model's device)."""
    was_training = model.training
    model.eval()
    device = prompts.device
    batch, prompt_len = prompts.shape
    with _peak_memory(model, device) as peak:
        prefill_s = mean_seconds(lambda: model(input_ids=prompts), device, repeats, warmup)
        generate_s = mean_seconds(lambda: greedy_continuation(model, prompts, new_tokens), device, repeats, warmup)
    model.train(was_training)
    decode_s = max(generate_s - prefill_s, 1e-9)
    return Efficiency(
        prefill_tokens_per_s=batch * prompt_len / prefill_s,
        decode_tokens_per_s=batch * (new_tokens - 1) / decode_s,
        peak_memory_bytes=peak[0],
        memory_method=CUDA_MEMORY if device.type == "cuda" else CPU_MEMORY,
    )


def efficiency_ratios(student: Efficiency, teacher: Efficiency) -> dict[str, float]:
    """Student over teacher: speedups (> 1 is faster) and memory ratio (< 1 is smaller), Table 11 style."""
    return {
        "prefill_speedup": student.prefill_tokens_per_s / teacher.prefill_tokens_per_s,
        "decode_speedup": student.decode_tokens_per_s / teacher.decode_tokens_per_s,
        "memory_ratio": student.peak_memory_bytes / teacher.peak_memory_bytes,
    }
