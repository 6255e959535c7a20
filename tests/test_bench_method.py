"""bench/bench_method.py, the timing method every benchmark shares: cases interleaved round by round after an untimed
warm-up, ratios paired per round, a too-noisy ratio refused. Checked with a fake clock, so nothing here is timed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# bench/ is a folder of scripts, not a package: load the file as the module its dataclasses need to find
MEASURE = Path(__file__).resolve().parents[1] / "bench" / "bench_method.py"
SPEC = importlib.util.spec_from_file_location("bench_method", MEASURE)
method = sys.modules.setdefault("bench_method", importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(method)


class FakeClock:
    """Time advances only when a case runs, by that case's next duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cases_run_interleaved_after_an_untimed_warmup():
    clock, calls = FakeClock(), []
    durations = {"a": iter([9.0, 2.0, 2.0, 3.0, 2.0, 2.0]), "b": iter([9.0, 1.0, 1.0, 1.0, 2.0, 1.0])}

    def case(name: str):
        def run() -> None:
            calls.append(name)
            clock.now += next(durations[name])
        return run

    timings = method.interleaved({"a": case("a"), "b": case("b")}, rounds=5, warmup=1, clock=clock)
    assert calls == ["a", "b"] * 6
    assert timings["a"].values == (2.0, 2.0, 3.0, 2.0, 2.0) and timings["b"].values == (1.0, 1.0, 1.0, 2.0, 1.0)
    ratio = method.paired_ratio(timings, "a", "b")
    assert ratio.values == (2.0, 2.0, 3.0, 1.0, 2.0) and ratio.median == 2.0
    assert ratio.summary() == {"median": 2.0, "min": 1.0, "max": 3.0, "rounds": 5}
    assert ratio.relative_spread == 1.0 and ratio.contains(2.5) and not ratio.contains(3.5)


def test_a_noisy_ratio_is_refused_and_a_steady_one_kept():
    method.refuse_noisy("steady", method.Spread((1.0, 1.05, 0.98, 1.02, 1.0)), bound=0.25)
    with pytest.raises(SystemExit, match=r"^noisy: the ratio's rounds spread 100% of its median \(1-2\), over the "
                                         r"25% bound"):
        method.refuse_noisy("noisy", method.Spread((1.0, 2.0, 1.0, 1.0, 1.5)), bound=0.25)


def test_fewer_than_five_rounds_are_refused():
    with pytest.raises(ValueError, match="rounds must be >= 5"):
        method.interleaved({"a": lambda: None}, rounds=3)
