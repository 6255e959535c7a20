"""Collect the efficiency results of repeated Table 11 grid runs into one JSON (the README's Table 11 numbers).

Usage: `OMP_NUM_THREADS=1 slim grid --output-dir runs/t11-<i> ablations/table11.yaml` for i = 1..3, then
`python bench/collect_efficiency.py --out bench/results/table11_tiny.json runs/t11-1 runs/t11-2 runs/t11-3`.
Each run's student-vs-teacher ratios (the speedups are medians of the eval's paired rounds, student and teacher
alternating; their min-max spread is kept per run), both models' decode tokens/s and decode caches, and per number
the median and min-max over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from slim.harness.provenance import stamped


def run_record(output_dir: Path) -> dict:
    """The single cell's eval summary of one grid output directory, reduced to its efficiency numbers."""
    [summary_file] = sorted(output_dir.glob("cells/*/eval_summary.json"))
    summary = json.loads(summary_file.read_text())
    efficiency = summary["efficiency"]
    return {"output_dir": str(output_dir), "decode_cache": summary["decode_cache"],
            "teacher_decode_cache": efficiency["teacher_decode_cache"], **efficiency["student_vs_teacher"],
            "student_decode_tokens_per_s": efficiency["model"]["decode_tokens_per_s"],
            "teacher_decode_tokens_per_s": efficiency["teacher"]["decode_tokens_per_s"],
            "speedup_rounds": efficiency["student_vs_teacher_spread"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("output_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    runs = [run_record(directory) for directory in args.output_dirs]
    numeric = [key for key, value in runs[0].items() if isinstance(value, float)]
    result = {"runs": runs, "median": {key: statistics.median(run[key] for run in runs) for key in numeric},
              "range": {key: [min(run[key] for run in runs), max(run[key] for run in runs)] for key in numeric}}
    args.out.write_text(json.dumps(stamped(result), indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
