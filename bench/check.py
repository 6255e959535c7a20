"""Do the committed benchmark ratios reproduce here? Rerun each at its smallest committed size and compare.

    python bench/check.py --quick

For every CPU benchmark with a ratio (calibration / forward, grouped_mm / eager MoE block, fused / naive eq-12 head
step, tiny distillation step with the fused / full-logits head) this reruns the smallest point its committed
`bench/results/*.json` holds, with the same method (bench/bench_method.py), into a scratch file, and prints per row
the committed median with its spread (min-max over its rounds), the rerun's median and whether that lies within the
committed spread. Exit status 1 when a row does not (rerun on an idle machine before reading anything into it: the
bench README marks the rows known to be noisy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

Rows = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Check:
    """One benchmark: its committed result, the arguments of its quick rerun, and how to read its ratio rows."""

    result: str
    script: str
    quick: tuple[str, ...]
    rows: Callable[[dict], Rows]


def calibration_rows(result: dict) -> Rows:
    return {f"E={point['num_experts']} calibrate / plain{'' if name == 'ratio' else ' (' + name[6:] + ')'}": summary
            for point in result["points"] for name, summary in point["ratios"].items()}


def moe_block_rows(result: dict) -> Rows:
    return {f"E={point['num_experts']} {name} / eager": summary for point in result["points"]
            for name, summary in point["ratio_vs_eager"].items() if name != "eager"}


def kd_step_rows(result: dict) -> Rows:
    return {f"V={shape['vocab_size']} {name} / naive time": values["time_ratio"] for shape in result["shapes"]
            for name, values in shape["results"].items() if "time_ratio" in values}


def distill_step_rows(result: dict) -> Rows:
    baseline = result["cases"][0]["kd_kernel"]
    return {f"{case['kd_kernel']} / {baseline} tokens/s": case["speedup_vs_first"] for case in result["cases"][1:]}


CHECKS = (
    Check("calibration.json", "bench/calibration.py", ("--experts", "16", "--threads", "1"), calibration_rows),
    Check("moe_block.json", "bench/moe_block.py", ("--experts", "64", "--device", "cpu"), moe_block_rows),
    Check("kd_loss_step.json", "bench/kd_loss.py", ("--case", "step", "--device", "cpu", "--vocab-sizes", "32000"),
          kd_step_rows),
    Check("distill_step.json", "bench/distill_step.py", ("--kd-kernels", "reference", "chunked"), distill_step_rows),
)


def rerun(check: Check, scratch: Path) -> Rows:
    out = scratch / check.result
    subprocess.run([sys.executable, str(ROOT / check.script), *check.quick, "--out", str(out)], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    return check.rows(json.loads(out.read_text()))


def compare(check: Check, committed: Rows, fresh: Rows) -> list[tuple[str, str, str, str, bool]]:
    """(benchmark, row, committed median (min-max), rerun median, within) for every row the rerun measured."""
    lines = []
    for row, new in fresh.items():
        old = committed.get(row)
        if old is None:
            raise SystemExit(f"{check.result}: the committed result has no row {row!r}; regenerate it")
        within = old["min"] <= new["median"] <= old["max"]
        lines.append((check.result, row, f"{old['median']:.3g} ({old['min']:.3g}-{old['max']:.3g})",
                      f"{new['median']:.3g}", within))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", required=True,
                        help="the smallest committed point of each benchmark (the only mode)")
    parser.parse_args()
    start = time.monotonic()
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-check-") as scratch:
        for check in CHECKS:
            committed = check.rows(json.loads((RESULTS / check.result).read_text()))
            lines += compare(check, committed, rerun(check, Path(scratch)))
    widths = [max(len(line[column]) for line in lines) for column in range(4)]
    for *cells, within in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + ("  within" if within else
                                                                                   "  OUTSIDE"))
    print(f"{sum(within for *_, within in lines)}/{len(lines)} rows within the committed spread "
          f"({time.monotonic() - start:.0f} s)")
    return 0 if all(within for *_, within in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
