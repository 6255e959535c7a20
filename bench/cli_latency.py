"""How long a refused config takes to answer, from a fresh `slim` process: a misspelt method name and an
out-of-range number, plus `slim config` (which prints the resolved config, importing no library either) and
`slim methods`. Each command runs --rounds times in turn (the commands interleaved); the median and the min-max
of its wall times are written with the load average before and after. The goal is under 2 s per refusal on an idle
machine.

    .venv/bin/python bench/cli_latency.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from slim.harness.provenance import stamped

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cli_latency.json"
SLIM = [sys.executable, "-m", "slim.harness.cli.main"]
COMMANDS = {
    "compress criterion=reapp": ["compress", "conf/recipes/tiny-slimqwen.yaml", "compress.experts.criterion=reapp"],
    "run train.lr=-1": ["run", "conf/recipes/tiny-slimqwen.yaml", "train.lr=-1"],
    "config": ["config", "conf/recipes/tiny-slimqwen.yaml"],
    "methods": ["methods"],
}
GOAL_SECONDS = 2.0


def wall_seconds(argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run([*SLIM, *argv], cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    wall_seconds(COMMANDS["methods"])  # warm the page cache once
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    status: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            seconds, status[name] = wall_seconds(argv)
            times[name].append(seconds)
    rows = {name: {"exit_status": status[name], "median_s": round(statistics.median(values), 3),
                   "min_s": round(min(values), 3), "max_s": round(max(values), 3), "rounds": len(values)}
            for name, values in times.items()}
    results = {"commands": rows, "goal_s": GOAL_SECONDS, "load_average_1min": [load_before, os.getloadavg()[0]],
               "refusals_under_goal": all(rows[name]["median_s"] < GOAL_SECONDS and rows[name]["exit_status"] == 2
                                          for name in ("compress criterion=reapp", "run train.lr=-1"))}
    RESULTS.write_text(json.dumps(stamped(results), indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
