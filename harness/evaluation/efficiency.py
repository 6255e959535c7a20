"""Prefill / decode throughput and peak memory of causal LMs (SlimQwen Table 11 analog).

Prefill: one forward over a [B, P] prompt batch that fills the cache (attention keys and values, Gated
DeltaNet conv and recurrent states; slim.harness.models.families.prepare_decoding gives every model one). Decode:
`generate` of G tokens (greedy, exactly G); its first token comes from the prefill, so decode throughput is
B·(G-1) tokens over (generate time - prefill time). Each is the mean of `repeats` timed runs after `warmup`
untimed ones. Several models (a student and its teacher) are timed round by round, each round running every model's
prefill, then every model's generate, so load from other processes hits them alike; their speed ratios are taken
per round and reported as the median with the min-max spread (slim.harness.spread, as the benchmarks report theirs).

Peak memory is each model's own, measured over its untimed runs (at least one) while the others sit idle: the
model's parameter and buffer bytes plus the peak rise above the level before those runs, of
`torch.cuda.max_memory_allocated` on CUDA and of the process RSS on CPU, sampled every millisecond by a thread
(torch's CPU allocator is invisible to tracemalloc, so RSS is the measure). Counting the rise, not the total, keeps
the other resident models' weights out of a model's peak.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch
from transformers import PreTrainedModel

from slim.harness.evaluation.mtp_acceptance import greedy_continuation
from slim.harness.spread import Spread

CUDA_MEMORY = "cuda_weights_plus_peak_allocated_rise"
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
    """Yields a one-element list that holds the model's peak memory in bytes once the block exits: its weights plus
    the peak rise of allocated (CUDA) or resident (CPU) memory during the block."""
    result = [0]
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result[0] = weights + torch.cuda.max_memory_allocated(device) - before
        return
    with _PeakRSS() as rss:
        before = rss.peak
        yield result
    result[0] = weights + rss.peak - before


def timed_seconds(run: Callable[[], object], device: torch.device) -> float:
    """One run's wall time, the device synchronized before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - begin


def mean_seconds(run: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    return statistics.fmean(timed_seconds(run, device) for _ in range(repeats))


@dataclass(frozen=True)
class Timings:
    """One model's peak memory and its seconds per timed round."""

    peak_memory_bytes: int
    prefill_s: tuple[float, ...]
    generate_s: tuple[float, ...]

    def efficiency(self, prompts: torch.Tensor, new_tokens: int) -> Efficiency:
        batch, prompt_len = prompts.shape
        prefill_s, generate_s = statistics.fmean(self.prefill_s), statistics.fmean(self.generate_s)
        return Efficiency(
            prefill_tokens_per_s=batch * prompt_len / prefill_s,
            decode_tokens_per_s=batch * (new_tokens - 1) / max(generate_s - prefill_s, 1e-9),
            peak_memory_bytes=self.peak_memory_bytes,
            memory_method=CUDA_MEMORY if prompts.device.type == "cuda" else CPU_MEMORY,
        )


@torch.no_grad()
def time_models(models: dict[str, PreTrainedModel], prompts: torch.Tensor, new_tokens: int, repeats: int,
                warmup: int) -> dict[str, Timings]:
    """Each model's peak memory over its untimed runs, then `repeats` rounds that time every model's prefill and
    then every model's generate on `prompts` [B, P] (on the models' device)."""
    was_training = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    device = prompts.device
    prefill = {name: (lambda model=model: model(input_ids=prompts)) for name, model in models.items()}
    generate = {name: (lambda model=model: greedy_continuation(model, prompts, new_tokens))
                for name, model in models.items()}
    peaks = {}
    for name, model in models.items():
        with _peak_memory(model, device) as peak:
            for _ in range(max(warmup, 1)):
                prefill[name]()
                generate[name]()
        peaks[name] = peak[0]
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for kind, runs in (("prefill", prefill), ("generate", generate)):
            for name, run in runs.items():
                seconds.setdefault((name, kind), []).append(timed_seconds(run, device))
    for name, model in models.items():
        model.train(was_training[name])
    return {name: Timings(peaks[name], tuple(seconds[name, "prefill"]), tuple(seconds[name, "generate"]))
            for name in models}


def efficiency_ratios(student: Timings, teacher: Timings) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Student over teacher, Table 11 style: speedups (> 1 is faster) paired per round, and the memory ratio (< 1 is
    smaller). (ratios, with the speedups' median; the speedups' median and min-max over the rounds, 4 decimals as
    slim.harness.spread rounds them)."""
    def decode_s(timings: Timings) -> list[float]:
        return [max(generate - prefill, 1e-9) for prefill, generate in zip(timings.prefill_s, timings.generate_s,
                                                                            strict=True)]

    rounds = {"prefill_speedup": Spread(tuple(t / s for s, t in zip(student.prefill_s, teacher.prefill_s,
                                                                    strict=True))),
              "decode_speedup": Spread(tuple(t / s for s, t in zip(decode_s(student), decode_s(teacher),
                                                                   strict=True)))}
    spread = {name: ratio.summary() for name, ratio in rounds.items()}
    ratios = {name: summary["median"] for name, summary in spread.items()}
    return {**ratios, "memory_ratio": student.peak_memory_bytes / teacher.peak_memory_bytes}, spread
