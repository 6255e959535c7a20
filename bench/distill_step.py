"""Tokens/s of one distillation step (student forward + eq-12 loss + backward) on the shipped tiny teacher.

    python bench/distill_step.py --kd-kernels reference chunked        # the fused head vs full logits, this tree
    python bench/distill_step.py --trees OLD_CHECKOUT NEW_CHECKOUT     # two commits, same KD kernel

A case is a tree and a `distill.kd_kernel`: every tree runs with every kernel, the first case is the baseline. A tree
is a checkout of this repository (e.g. `git worktree add --detach /tmp/old <commit>`, from the slim.* namespace on);
its code runs in a child process whose PYTHONPATH imports slim.* from it (slim.harness.source_tree). Within a process
the kernels alternate step by step (one module per kernel, same seed, same batches), so their ratio is paired inside
one process; the trees alternate process by process for `--rounds` rounds. Each speedup is paired per round and a
noisy one is refused. The student is the teacher itself (same shapes as a real step; its MTP module starts fresh),
`loss=full`, random token batches of --batch x --seq-len, `--steps` timed steps after 2 untimed ones.
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
    parser.add_argument("--trees", nargs="+", default=[str(ROOT)], help="checkouts to compare (default: this one)")
    parser.add_argument("--kd-kernels", nargs="+", default=["chunked"],
                        help="distill.kd_kernel values to compare: the eq-12 head (reference = full logits)")
    parser.add_argument("--out", default="bench/results/distill_step.json")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def worker(args: argparse.Namespace) -> dict[str, dict]:
    """In the tree on PYTHONPATH: one DistillModule per KD kernel, their steps alternating; per kernel the median
    tokens/s of `steps` timed forward+backward steps and the step times."""
    import torch

    from slim.harness.config.load import load_config
    from slim.harness.training.distill_module import DistillModule

    torch.set_num_threads(args.threads)
    modules = {}
    for kernel in args.kd_kernels:
        torch.manual_seed(0)  # the same MTP initialisation for every kernel
        cfg = load_config([f"distill.teacher={TEACHER}", f"distill.student={TEACHER}", "distill.loss=full",
                           f"distill.kd_kernel={kernel}"])
        modules[kernel] = DistillModule(cfg.distill, cfg.train)
        modules[kernel].configure_model()
    vocab = next(iter(modules.values())).student.config.vocab_size
    batches = [torch.randint(0, vocab, (args.batch, args.seq_len + 1)) for _ in range(args.steps + 2)]
    seconds: dict[str, list[float]] = {kernel: [] for kernel in modules}
    for index, tokens in enumerate(batches):
        for kernel, module in modules.items():
            start = time.perf_counter()
            module.step_loss({"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}).total.backward()
            module.student.zero_grad(set_to_none=True)
            if index >= 2:
                seconds[kernel].append(time.perf_counter() - start)
    return {kernel: {"tokens_per_s": args.batch * args.seq_len / statistics.median(times), "step_s": times}
            for kernel, times in seconds.items()}


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    load_before = load_average()
    cases = [(tree, kernel) for tree in args.trees for kernel in args.kd_kernels]
    if len(cases) < 2:
        raise SystemExit("--trees x --kd-kernels must give at least two cases to compare")
    if args.rounds < MIN_ROUNDS:
        raise SystemExit(f"--rounds must be >= {MIN_ROUNDS}, got {args.rounds}")
    runs: dict[tuple[str, str], list[dict]] = {case: [] for case in cases}
    shims = Path(tempfile.mkdtemp(prefix="distill-step-"))
    paths = {tree: python_path(Path(tree), shims / str(index)) for index, tree in enumerate(args.trees)}
    for _ in range(args.rounds):
        for tree in args.trees:
            command = [sys.executable, __file__, "--worker", "--trees", tree, "--kd-kernels", *args.kd_kernels,
                       "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
                       "--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": paths[tree]}
            result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            for kernel, run in json.loads(result.stdout.strip().splitlines()[-1]).items():
                runs[tree, kernel].append(run)
    first = [run["tokens_per_s"] for run in runs[cases[0]]]
    rows = []
    for tree, kernel in cases:
        commit = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        tokens_per_s = Spread(tuple(run["tokens_per_s"] for run in runs[tree, kernel]))
        # paired per round: kernels step by step in one process, trees in back-to-back processes
        speedup = Spread(tuple(mine / base for mine, base in zip(tokens_per_s.values, first, strict=True)))
        if (tree, kernel) != cases[0]:
            refuse_noisy(f"{commit} {kernel} speedup", speedup, NOISE_BOUND)
        rows.append({"tree": tree, "commit": commit, "kd_kernel": kernel, "tokens_per_s": tokens_per_s.summary(1),
                     "speedup_vs_first": speedup.summary(), "runs": runs[tree, kernel]})
        print(f"{commit:>10} {kernel:>10}  {tokens_per_s.median:8.0f} tokens/s  x{speedup.median:.2f} "
              f"({min(speedup.values):.2f}-{max(speedup.values):.2f})")
    report = {"teacher": str(TEACHER.relative_to(ROOT)), "loss": "full", "batch": args.batch, "seq_len": args.seq_len,
              "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "cases": rows,
              "method": "bench/bench_method.py's rule: the kernels alternate step by step in one process, the "
                        "trees process by process, round by round; the speedup is paired per round (median, "
                        "min-max)", **environment(args.threads, load_before),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stamped(report), indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
