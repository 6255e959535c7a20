"""Tokens/s of one distillation step (student forward + eq-12 loss + backward) on the shipped tiny teacher.

    python bench/distill_step.py --trees OLD_CHECKOUT NEW_CHECKOUT [--out bench/results/distill_step.json]

Each tree is a checkout of this repository (e.g. `git worktree add --detach /tmp/old <commit>`); its code runs in
a child process whose PYTHONPATH imports slim.* from <tree> (slim.harness.source_tree), alternating trees for
`--rounds` rounds so load from other jobs hits both alike; the speedup is paired per round and a noisy one is
refused. The student is the teacher itself (same shapes as a real step; its MTP module starts fresh), `loss=full`,
random token batches of --batch x --seq-len, `--steps` timed steps after 2 untimed ones, `--threads` threads.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_method import MIN_ROUNDS, Spread, environment, load_average, refuse_noisy  # noqa: E402

from slim.harness.provenance import stamped  # noqa: E402
from slim.harness.source_tree import python_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assets" / "tiny-teacher"
NOISE_BOUND = 0.25  # the speedup's rounds may spread at most this share of its median


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", required=True, help="checkouts to compare, the first is the baseline")
    parser.add_argument("--out", default="bench/results/distill_step.json")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
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
    load_before = load_average()
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
    first = [run["tokens_per_s"] for run in runs[args.trees[0]]]
    trees = []
    for tree in args.trees:
        commit = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        tokens_per_s = Spread(tuple(run["tokens_per_s"] for run in runs[tree]))
        # paired per round: the two trees ran back to back, so a load spike in one round hits both
        speedup = Spread(tuple(mine / base for mine, base in zip(tokens_per_s.values, first, strict=True)))
        if tree != args.trees[0]:
            refuse_noisy(f"{commit} speedup", speedup, NOISE_BOUND)
        trees.append({"tree": tree, "commit": commit, "tokens_per_s": tokens_per_s.summary(1),
                      "speedup_vs_first": speedup.summary(), "runs": runs[tree]})
        print(f"{commit:>10}  {tokens_per_s.median:8.0f} tokens/s  x{speedup.median:.2f} "
              f"({min(speedup.values):.2f}-{max(speedup.values):.2f})")
    report = {"teacher": str(TEACHER.relative_to(ROOT)), "loss": "full", "batch": args.batch, "seq_len": args.seq_len,
              "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "trees": trees,
              "method": "bench/bench_method.py's rule across processes: the trees alternate round by round, the "
                        "speedup is paired per round (median, min-max)", **environment(args.threads, load_before),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stamped(report), indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
