"""Tokens/s of one distillation step (student forward + eq-12 loss + backward) on the shipped tiny teacher.

    python bench/distill_step.py --trees OLD_CHECKOUT NEW_CHECKOUT [--out bench/results/distill_step.json]

Each tree is a checkout of this repository (e.g. `git worktree add --detach /tmp/old <commit>`); its code runs in
a child process whose PYTHONPATH imports slim.* from <tree> (slim.harness.source_tree), alternating trees for
`--rounds` rounds so load from other jobs hits both alike. The student is the teacher itself (same shapes as a real
step; its MTP module starts fresh), `loss=full`, random token batches of --batch x --seq-len, `--steps` timed steps
after 2 untimed ones, `--threads` threads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slim.harness.provenance import stamped
from slim.harness.source_tree import python_path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assets" / "tiny-teacher"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", required=True, help="checkouts to compare, the first is the baseline")
    parser.add_argument("--out", default="bench/results/distill_step.json")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def worker(args: argparse.Namespace) -> dict:
    """In the tree on PYTHONPATH: build the DistillModule and time `steps` forward+backward steps."""
    import torch

    from slim.harness.config.load import load_config
    from slim.harness.training.distill_module import DistillModule

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config([f"distill.teacher={TEACHER}", f"distill.student={TEACHER}", "distill.loss=full"])
    module = DistillModule(cfg.distill, cfg.train)
    module.configure_model()
    vocab = module.student.config.vocab_size
    batches = [torch.randint(0, vocab, (args.batch, args.seq_len + 1)) for _ in range(args.steps + 2)]
    seconds = []
    for index, tokens in enumerate(batches):
        start = time.perf_counter()
        module.step_loss({"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}).total.backward()
        module.student.zero_grad(set_to_none=True)
        if index >= 2:
            seconds.append(time.perf_counter() - start)
    return {"tokens_per_s": args.batch * args.seq_len / statistics.median(seconds), "step_s": seconds}


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    runs: dict[str, list[dict]] = {tree: [] for tree in args.trees}
    shims = Path(tempfile.mkdtemp(prefix="distill-step-"))
    paths = {tree: python_path(Path(tree), shims / str(index)) for index, tree in enumerate(args.trees)}
    for _ in range(args.rounds):
        for tree in args.trees:
            command = [sys.executable, __file__, "--worker", "--trees", tree, "--batch", str(args.batch),
                       "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": paths[tree]}
            result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            runs[tree].append(json.loads(result.stdout.strip().splitlines()[-1]))
    baseline = statistics.median(run["tokens_per_s"] for run in runs[args.trees[0]])
    trees = []
    for tree in args.trees:
        commit = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        tokens_per_s = statistics.median(run["tokens_per_s"] for run in runs[tree])
        trees.append({"tree": tree, "commit": commit, "tokens_per_s": tokens_per_s,
                      "speedup_vs_first": tokens_per_s / baseline, "runs": runs[tree]})
        print(f"{commit:>10}  {tokens_per_s:8.0f} tokens/s  x{tokens_per_s / baseline:.2f}")
    report = {"teacher": str(TEACHER.relative_to(ROOT)), "loss": "full", "batch": args.batch, "seq_len": args.seq_len,
              "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "trees": trees,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stamped(report), indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
