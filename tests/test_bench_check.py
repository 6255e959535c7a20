"""bench/check.py, the quick rerun of the committed ratios: how it reads each result's rows and judges a rerun
against the committed spread. Hand-made results, so nothing here is timed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SPEC = importlib.util.spec_from_file_location("bench_check", BENCH / "check.py")
check = sys.modules.setdefault("bench_check", importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(check)


def spread(median: float, low: float, high: float) -> dict[str, float]:
    return {"median": median, "min": low, "max": high, "rounds": 5}


def test_a_rerun_inside_the_committed_spread_passes_and_one_outside_fails():
    committed = {"E=16 calibrate / plain": spread(0.8, 0.7, 0.9), "E=16 calibrate / plain (probe)": spread(1, 0.9, 1.1)}
    fresh = {"E=16 calibrate / plain": spread(0.85, 0.8, 0.9), "E=16 calibrate / plain (probe)": spread(1.3, 1.2, 1.4)}
    lines = check.compare(check.CHECKS[0], committed, fresh)
    assert [(row, within) for _, row, *_, within in lines] == [
        ("E=16 calibrate / plain", True), ("E=16 calibrate / plain (probe)", False)]
    assert lines[0][2:4] == ("0.8 (0.7-0.9)", "0.85")


def test_a_row_missing_from_the_committed_result_is_refused():
    with pytest.raises(SystemExit, match="has no row 'V=32000 triton / naive time'; regenerate it"):
        check.compare(check.CHECKS[2], {}, {"V=32000 triton / naive time": spread(1, 1, 1)})


def test_distill_step_rows_are_the_speedups_over_the_first_case():
    result = {"cases": [{"kd_kernel": "reference", "speedup_vs_first": spread(1, 1, 1)},
                        {"kd_kernel": "chunked", "speedup_vs_first": spread(1.3, 1.2, 1.4)}]}
    assert check.distill_step_rows(result) == {"chunked / reference tokens/s": spread(1.3, 1.2, 1.4)}


@pytest.mark.parametrize("bench", check.CHECKS, ids=lambda bench: bench.result)
def test_every_committed_result_has_the_rows_its_quick_rerun_reads(bench):
    rows = bench.rows(json.loads((BENCH / "results" / bench.result).read_text()))
    assert rows and all({"median", "min", "max"} <= set(summary) for summary in rows.values())
