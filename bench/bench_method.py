"""How every benchmark times a comparison, so that a committed ratio reproduces on a rerun.

The cases of a comparison run interleaved in one process (A, B, A, B, ...) after a warm-up round, for at least
MIN_ROUNDS rounds, so load from other processes hits them alike. A ratio is taken per round (A_i / B_i: the two ran
seconds apart) and summarised by its median and its spread (min-max); a case's seconds likewise. The record carries
the thread count and the load average before and after, and a ratio whose spread exceeds its bound is refused: the
machine was too noisy for the number to mean anything, so rerun it on a quieter one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from slim.harness.spread import Spread

__all__ = ["MIN_ROUNDS", "Spread", "environment", "interleaved", "load_average", "paired_ratio", "refuse_noisy"]

MIN_ROUNDS = 5


def interleaved(cases: dict[str, Callable[[], object]], rounds: int = MIN_ROUNDS, warmup: int = 1,
                synchronize: Callable[[], object] = lambda: None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, Spread]:
    """Seconds of each case over `rounds` rounds, every round running every case once in the given order, after
    `warmup` untimed rounds; `synchronize` waits for queued device work before each clock read."""
    if rounds < MIN_ROUNDS:
        raise ValueError(f"rounds must be >= {MIN_ROUNDS}, got {rounds}")
    for _ in range(warmup):
        for run in cases.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            synchronize()
            start = clock()
            run()
            synchronize()
            seconds[name].append(clock() - start)
    return {name: Spread(tuple(values)) for name, values in seconds.items()}


def paired_ratio(timings: dict[str, Spread], case: str, baseline: str) -> Spread:
    """`case` / `baseline` per round: a load spike that slowed both in one round cancels out."""
    return Spread(tuple(a / b for a, b in zip(timings[case].values, timings[baseline].values, strict=True)))


def refuse_noisy(name: str, ratio: Spread, bound: float) -> None:
    """Stop (exit status 1) when `ratio`'s relative spread exceeds `bound`: such a number would not reproduce."""
    if ratio.relative_spread > bound:
        raise SystemExit(f"{name}: the ratio's rounds spread {ratio.relative_spread:.0%} of its median "
                         f"({min(ratio.values):.3g}-{max(ratio.values):.3g}), over the {bound:.0%} bound; the machine "
                         "was too busy for it to reproduce: rerun on a quieter one")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def environment(threads: int, load_before: float) -> dict[str, float | int]:
    """The run's conditions, recorded beside its numbers."""
    return {"threads": threads, "load_average_before": load_before, "load_average_after": load_average()}
