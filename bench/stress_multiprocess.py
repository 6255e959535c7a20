"""The multi-process tests, N times in a row, with CPU burners beside them: are they race-free under load?

    python bench/stress_multiprocess.py [--runs 20] [--burners 1] [--out bench/results/stress_multiprocess.json]

Each run is one fresh `pytest` process over the selection below (search workers, FSDP, grid workers, the grid lock
and orphan checks); `--burners` processes spin on the CPU (`while True: pass`) for the whole time, so the tests
share the cores with a CPU-heavy neighbour as they would on a loaded CI machine. Stops at the first failing run
(`--keep-going` runs all). Writes per-run outcome and seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from slim.harness.provenance import stamped

SELECTION = [
    "tests/test_grid_safety.py::test_second_grid_on_one_folder_is_refused_naming_the_holder",
    "tests/test_grid_safety.py::test_workers_die_with_a_killed_grid",
    "tests/test_grid.py::test_parallel_workers_record_the_same_rows",
    "tests/test_grid.py::test_submitit_local_executor_matches_inprocess",
    "tests/test_search.py::test_workers_on_the_default_storage_run_each_queued_trial_exactly_once",
    "tests/test_search.py::test_two_workers_share_one_journal_study_prune_and_export_the_best_recipe",
    "tests/test_fsdp.py",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burners", type=int, default=1)
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--out", default="bench/results/stress_multiprocess.json")
    parser.add_argument("tests", nargs="*", default=SELECTION)
    return parser.parse_args()


def run_once(tests: list[str]) -> tuple[bool, float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                            capture_output=True, text=True)
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    return result.returncode == 0, time.perf_counter() - start, summary


def main() -> None:
    args = parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    runs = []
    try:
        for index in range(args.runs):
            passed, seconds, summary = run_once(args.tests)
            runs.append({"run": index + 1, "passed": passed, "seconds": round(seconds, 1), "pytest": summary})
            print(json.dumps(runs[-1]), flush=True)
            if not passed and not args.keep_going:
                break
    finally:
        for burner in burners:
            burner.kill()
    result = {
        "benchmark": "stress_multiprocess", "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores", "load": f"{args.burners} busy-loop process(es) beside the tests",
        "tests": args.tests, "runs": runs, "passed": sum(run["passed"] for run in runs), "of": args.runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stamped(result), indent=2) + "\n")
    print(f"{result['passed']}/{args.runs} runs passed; wrote {args.out}")


if __name__ == "__main__":
    main()
