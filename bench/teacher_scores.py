"""Downstream scores of the shipped tiny teacher on the local lm-eval tasks, and of its random-init twin.

    python bench/teacher_scores.py [--limit 300] [--out bench/results/tiny_teacher_scores.json]

The twin has the teacher's config with every weight redrawn (slim.harness.compression.scratch.reinitialize_), so the
gap between them is what pretraining learned; it runs the multiple-choice tasks only (its exact match is 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slim.harness.compression.scratch import reinitialize_  # noqa: E402
from slim.harness.evaluation.lm_eval_runner import run_lm_eval, task_manager  # noqa: E402
from slim.harness.evaluation.local_tasks import BUILDERS  # noqa: E402
from slim.harness.models.io import load_pretrained  # noqa: E402
from slim.harness.provenance import stamped

TEACHER = "assets/tiny-teacher"
MULTIPLE_CHOICE = ["kjv_cloze", "kjv_next_verse"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="items per task")
    parser.add_argument("--out", default="bench/results/tiny_teacher_scores.json")
    args = parser.parse_args()
    manager = task_manager()
    results = {}
    for name, tasks in (("teacher", list(BUILDERS)), ("random_init", MULTIPLE_CHOICE)):
        model, tokenizer = load_pretrained(TEACHER)
        if name == "random_init":
            reinitialize_(model, seed=0)
        results[name] = run_lm_eval(model.eval(), tokenizer, tasks, manager, args.limit, batch_size=32)
    report = {"teacher": TEACHER, "limit": args.limit, "scores": results,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).write_text(json.dumps(stamped(report), indent=2) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
