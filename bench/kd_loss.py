"""KD loss: chunked (and Triton, where it runs) vs the naive full-logits reference, forward + backward.

    python bench/kd_loss.py [--out bench/results/kd_loss.json] [--device cpu|cuda]
    python bench/kd_loss.py --case step [--out bench/results/kd_loss_step.json]

The baseline is `slim.kernels.kd_loss.reference`, the implementation the tests check the others against.
`--case step` times the whole eq-12 head loss of one distillation step instead: LM + KD on the backbone
and MTP-LM + MTP-KD on one MTP depth, at the `full` mix's weights, forward + backward. "naive" builds each
term's logits as slim.harness.training.loss_terms does (the pre-fusion step); "fused" / "fused-triton" is
`slim.harness.training.distill_terms.head_terms` (one chunked pass per head). On CPU hidden STEP_HIDDEN with
N = 4d tokens, so the [V, d] weight-gradient floor does not hide the saving; on CUDA d = 2048, N = 4096.
Targets: memory <= 0.2x,
time <= 1.0x.
Peak memory: every (vocab, implementation) pair's first call in a fresh child process (this file with --worker),
MEMORY_METHOD says how. Time: one more child per vocab runs all implementations on identical seeded inputs,
interleaved round by round after a warm-up round (bench/bench_method.py), ratios paired per round; a ratio whose
rounds spread over NOISE_BOUND of its median is refused. Targets: memory <= 0.2x and time <= 1.2x the reference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_method import (  # noqa: E402
    MIN_ROUNDS,
    Spread,
    environment,
    interleaved,
    load_average,
    paired_ratio,
    refuse_noisy,
)

from slim.harness.provenance import stamped  # noqa: E402
from slim.harness.training.distill_terms import HiddenStates, head_terms  # noqa: E402
from slim.harness.training.loss_terms import kd_loss_from_logits, lm_loss, mtp_kd_loss, mtp_lm_loss  # noqa: E402
from slim.kernels.kd_loss import kd_implementations  # noqa: E402
from slim.kernels.kd_loss.chunked import default_chunk_size  # noqa: E402
from slim.kernels.kd_loss.fused_head import head_implementations  # noqa: E402
from slim.kernels.kd_loss.reference import kd_loss_reference  # noqa: E402

VOCAB_SIZES = (32000, 151936)
HIDDEN = 2048
GPU_TOKENS = 4096
# 2 shared CPU cores do ~40 GFLOP/s; a call is 4 matmuls of 2*N*d*V flops, run 4 times per side.
CPU_TOKENS = {32000: 1024, 151936: 256}
MEMORY_METHOD = (
    "peak bytes above the inputs in a fresh child process: on CUDA torch.cuda.max_memory_allocated() after the "
    "first call minus memory_allocated() once the inputs exist; on CPU the RSS high-water mark "
    "(resource.getrusage(RUSAGE_SELF).ru_maxrss) after the first call minus the same mark once the inputs exist "
    "(inputs are filled in place, and tensors this large are mmapped, so RSS follows live tensors). Both sides "
    "include the gradients they return: [N, d] and the [V, d] head-weight gradient, a floor that the chunked "
    "kernels also hold as an fp32 accumulator (weight_grad_accumulator_bytes) and that dominates when N < d."
)
MEMORY_TARGET = 0.2
TIME_TARGET = 1.2
STEP_HIDDEN = 256
STEP_TIME_TARGET = 1.0
NOISE_BOUND = 0.5  # a time ratio's rounds may spread at most this share of its median
STEP_LAMBDA, STEP_BETA = 0.5, 0.2  # a mid-schedule point of eq 12: every term has a nonzero weight


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("kernel", "step"), default="kernel")
    parser.add_argument("--out", help="default: bench/results/kd_loss.json, or kd_loss_step.json for --case step")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--tokens", type=int, help="N for every vocab size (default: 4096 on cuda, smaller on cpu)")
    parser.add_argument("--repeats", type=int, default=MIN_ROUNDS, help="timed rounds after one warm-up round")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=list(VOCAB_SIZES))
    parser.add_argument("--chunk-size", type=int, help="chunk rows for the chunked kernels (default: their own)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    return parser.parse_args()


def make_inputs(num_tokens: int, vocab_size: int, dtype: torch.dtype, device: str,
                hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    """Seeded hidden states and heads with logits of unit scale; student tensors require grad. Filled in
    place so creating them leaves no transient copies in the memory high-water mark. The step case adds MTP
    depth-1 hidden states and labels."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device).normal_(generator=generator).mul_(scale)

    return {
        "student_hidden": randn(num_tokens, hidden).requires_grad_(),
        "teacher_hidden": randn(num_tokens, hidden),
        "student_head_weight": randn(vocab_size, hidden, scale=hidden**-0.5).requires_grad_(),
        "teacher_head_weight": randn(vocab_size, hidden, scale=hidden**-0.5),
        "student_mtp": randn(num_tokens - 1, hidden).requires_grad_(),
        "teacher_mtp": randn(num_tokens - 1, hidden),
        "labels": torch.randint(0, vocab_size, (num_tokens,), generator=generator, device=device),
    }


def naive_step(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The eq-12 head loss as four separate terms on full logits (loss_terms), combined at the full mix's weights."""
    def logits(hidden: str, head: str) -> torch.Tensor:
        return (inputs[hidden] @ inputs[head].T)[None]

    labels = inputs["labels"][None]
    with torch.no_grad():
        teacher, teacher_mtp = (logits("teacher_hidden", "teacher_head_weight"),
                                logits("teacher_mtp", "teacher_head_weight"))
    lm = lm_loss(logits("student_hidden", "student_head_weight"), labels)
    kd = kd_loss_from_logits(logits("student_hidden", "student_head_weight"), teacher)
    mtp_lm = mtp_lm_loss([logits("student_mtp", "student_head_weight")], labels)
    mtp_kd = mtp_kd_loss([logits("student_mtp", "student_head_weight")], [teacher_mtp])
    lam, beta = STEP_LAMBDA, STEP_BETA
    return (1 - lam) * lm + lam * kd + beta * ((1 - lam) * mtp_lm + lam * mtp_kd)


def fused_step(inputs: dict[str, torch.Tensor], kernel: str) -> torch.Tensor:
    """The same loss through head_terms: one fused chunked pass per head."""
    lam, beta = STEP_LAMBDA, STEP_BETA
    weights = {"lm": 1 - lam, "kd": lam, "mtp_lm": beta * (1 - lam), "mtp_kd": beta * lam}
    student = HiddenStates(inputs["student_hidden"][None], [inputs["student_mtp"][None]], inputs["student_head_weight"])
    teacher = HiddenStates(inputs["teacher_hidden"][None], [inputs["teacher_mtp"][None]], inputs["teacher_head_weight"])
    total, _ = head_terms(head_implementations.get(kernel), weights, student, teacher, inputs["labels"][None], 1.0)
    return total


def peak_bytes_since_start(device: str) -> int:
    """High-water mark of allocated bytes: CUDA allocator stats, or this process's max RSS on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_loss(args: argparse.Namespace, name: str, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One forward + backward of implementation `name` on `inputs`, gradients cleared after."""
    if args.case == "step":
        def loss() -> torch.Tensor:
            return naive_step(inputs) if name == "naive" else fused_step(inputs, name.split("-")[-1])
    else:
        loss_fn = kd_loss_reference if name == "reference" else kd_implementations.get(name)
        options = {} if name == "reference" or args.chunk_size is None else {"chunk_size": args.chunk_size}
        kd_inputs = {key: inputs[key] for key in ("student_hidden", "teacher_hidden", "student_head_weight",
                                                  "teacher_head_weight")}

        def loss() -> torch.Tensor:
            return loss_fn(**kd_inputs, **options)

    def call() -> None:
        loss().backward()
        inputs["student_hidden"].grad = inputs["student_head_weight"].grad = inputs["student_mtp"].grad = None
        if args.device == "cuda":
            torch.cuda.synchronize()

    return call


def memory_worker(args: argparse.Namespace, dtype: torch.dtype, num_tokens: int) -> dict[str, int]:
    """Child process of one implementation: the peak memory of its first call (MEMORY_METHOD)."""
    inputs = make_inputs(num_tokens, args.vocab, dtype, args.device, hidden_size(args))
    call = make_loss(args, args.worker, inputs)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if args.device == "cuda" else peak_bytes_since_start("cpu")
    call()
    return {"peak_bytes": peak_bytes_since_start(args.device) - baseline}


def time_worker(args: argparse.Namespace, dtype: torch.dtype, num_tokens: int) -> dict[str, dict]:
    """Child process of every implementation on the same inputs, interleaved (bench/bench_method.py)."""
    inputs = make_inputs(num_tokens, args.vocab, dtype, args.device, hidden_size(args))
    timings = interleaved({name: make_loss(args, name, inputs) for name in args.names.split(",")},
                          rounds=args.repeats)
    names = args.names.split(",")
    return {name: spread.summary() for name, spread in timings.items()} | {
        "ratio_values": {name: paired_ratio(timings, name, names[0]).values for name in names[1:]}}


def run_child(args: argparse.Namespace, worker: str, vocab_size: int, num_tokens: int, names: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--vocab", str(vocab_size), "--tokens", str(num_tokens),
               "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats), "--case", args.case,
               "--names", ",".join(names)]
    if args.chunk_size is not None:
        command += ["--chunk-size", str(args.chunk_size)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def compare(args: argparse.Namespace, vocab_size: int, num_tokens: int) -> dict:
    """Reference and every other runnable implementation on one shape: peak memory from a fresh process each,
    time interleaved in one process, ratios to the reference per round."""
    triton = args.device == "cuda" and "triton" in kd_implementations.keys()
    names = (["naive", "fused-chunked"] + (["fused-triton"] if triton else []) if args.case == "step"
             else ["reference", "chunked"] + (["triton"] if triton else []))
    results = {name: run_child(args, name, vocab_size, num_tokens, names) for name in names}
    times = run_child(args, "time", vocab_size, num_tokens, names)
    for name in names:
        results[name]["seconds"] = times[name]
    for name in names[1:]:
        result = results[name]
        result["memory_ratio"] = result["peak_bytes"] / results[names[0]]["peak_bytes"]
        ratio = Spread(tuple(times["ratio_values"][name]))
        refuse_noisy(f"V={vocab_size} {name} time", ratio, NOISE_BOUND)
        result["time_ratio"] = ratio.summary()
        result["memory_pass"] = result["memory_ratio"] <= MEMORY_TARGET
        result["time_pass"] = result["time_ratio"]["median"] <= time_target(args)
    hidden = hidden_size(args)
    return {"vocab_size": vocab_size, "tokens": num_tokens, "hidden": hidden,
            "weight_grad_accumulator_bytes": vocab_size * hidden * 4, "results": results}


def hidden_size(args: argparse.Namespace) -> int:
    """d: the kernel case's 2048 everywhere; the step case's STEP_HIDDEN on CPU (so N = 4d stays affordable)."""
    return STEP_HIDDEN if args.case == "step" and args.device == "cpu" else HIDDEN


def time_target(args: argparse.Namespace) -> float:
    return STEP_TIME_TARGET if args.case == "step" else TIME_TARGET


def tokens_for(args: argparse.Namespace, vocab_size: int) -> tuple[int, str]:
    if args.tokens is not None:
        return args.tokens, "set by --tokens"
    if args.device == "cuda":
        return GPU_TOKENS, "spec size"
    if args.case == "step":
        return 4 * STEP_HIDDEN, "CPU: N = 4d, so the [V, d] weight-gradient floor does not hide the saving"
    return CPU_TOKENS[vocab_size], (f"CPU: shrunk from {GPU_TOKENS} so the whole bench (4 fwd+bwd calls per side, "
                                    "4 matmuls of 2*N*d*V flops each, ~40 GFLOP/s on 2 shared cores) fits ~5 min")


def main() -> None:
    args = parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.out = args.out or f"bench/results/kd_loss{'_step' if args.case == 'step' else ''}.json"
    if args.worker:
        worker = time_worker if args.worker == "time" else memory_worker
        print(json.dumps(worker(args, getattr(torch, args.dtype), args.tokens)))
        return
    load_before = load_average()
    shapes = []
    for vocab_size in args.vocab_sizes:
        num_tokens, why = tokens_for(args, vocab_size)
        shapes.append(compare(args, vocab_size, num_tokens) | {"tokens_reason": why})
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "case": args.case,
        "chunk_size": args.chunk_size or default_chunk_size(hidden_size(args)),
        "repeats": args.repeats,
        "targets": {"memory_ratio_max": MEMORY_TARGET, "time_ratio_max": time_target(args)},
        "memory_method": MEMORY_METHOD,
        "shapes": shapes,
        "torch": torch.__version__,
        "method": "bench/bench_method.py: the implementations interleaved in one process after a warm-up round, "
                  "time ratios paired per round (median, min-max); peak memory from a fresh process each",
        **environment(torch.get_num_threads(), load_before),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamped(report), indent=2) + "\n")
    print(f"{'V':>7} {'N':>5} {'impl':>13} {'time s':>8} {'peak MiB':>9} {'time x':>7} {'mem x':>6}  verdict")
    for shape in shapes:
        for name, result in shape["results"].items():
            ratios = (f"{result['time_ratio']['median']:7.2f} {result['memory_ratio']:6.3f}  "
                      f"{'ok' if result['time_pass'] and result['memory_pass'] else 'MISSES TARGET'}"
                      if "time_ratio" in result else f"{'1':>7} {'1':>6}  baseline")
            print(f"{shape['vocab_size']:>7} {shape['tokens']:>5} {name:>13} {result['seconds']['median']:8.3f} "
                  f"{result['peak_bytes'] / 2**20:9.0f} {ratios}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
