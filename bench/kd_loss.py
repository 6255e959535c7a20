"""KD loss: chunked (and Triton, where it runs) vs the naive full-logits reference, forward + backward.

    python bench/kd_loss.py [--out bench/results/kd_loss.json] [--device cpu|cuda]

The baseline is `kernels.kd_loss.reference`, the implementation the tests check the others against.
Every (vocab, implementation) pair runs in a fresh child process (this file with --worker), one after the
other in the same bench run, on identical seeded inputs: the first call is the warm-up and the memory
measurement, then `--repeats` calls give the median time. MEMORY_METHOD says how peak memory is taken.
Targets: memory <= 0.2x and time <= 1.2x the reference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.kd_loss import kd_implementations  # noqa: E402
from kernels.kd_loss.chunked import default_chunk_size  # noqa: E402
from kernels.kd_loss.reference import kd_loss_reference  # noqa: E402

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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/kd_loss.json")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--tokens", type=int, help="N for every vocab size (default: 4096 on cuda, smaller on cpu)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, help="chunk rows for the chunked kernels (default: their own)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def make_inputs(num_tokens: int, vocab_size: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Seeded hidden states and heads with logits of unit scale; student tensors require grad. Filled in
    place so creating them leaves no transient copies in the memory high-water mark."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device).normal_(generator=generator).mul_(scale)

    return {
        "student_hidden": randn(num_tokens, HIDDEN).requires_grad_(),
        "teacher_hidden": randn(num_tokens, HIDDEN),
        "student_head_weight": randn(vocab_size, HIDDEN, scale=HIDDEN**-0.5).requires_grad_(),
        "teacher_head_weight": randn(vocab_size, HIDDEN, scale=HIDDEN**-0.5),
    }


def peak_bytes_since_start(device: str) -> int:
    """High-water mark of allocated bytes: CUDA allocator stats, or this process's max RSS on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(args: argparse.Namespace, dtype: torch.dtype, num_tokens: int) -> dict[str, float | list[float]]:
    """Child process: one warm-up call measuring peak memory, then `repeats` timed calls."""
    inputs = make_inputs(num_tokens, args.vocab, dtype, args.device)
    loss_fn = kd_loss_reference if args.worker == "reference" else kd_implementations.get(args.worker)
    options = {} if args.worker == "reference" or args.chunk_size is None else {"chunk_size": args.chunk_size}

    def call() -> None:
        loss_fn(**inputs, **options).backward()
        inputs["student_hidden"].grad = inputs["student_head_weight"].grad = None
        if args.device == "cuda":
            torch.cuda.synchronize()

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if args.device == "cuda" else peak_bytes_since_start("cpu")
    call()
    peak = peak_bytes_since_start(args.device) - baseline
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return {"peak_bytes": peak, "seconds": seconds, "median_s": statistics.median(seconds)}


def run_child(args: argparse.Namespace, name: str, vocab_size: int, num_tokens: int) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--vocab", str(vocab_size), "--tokens", str(num_tokens),
               "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats)]
    if args.chunk_size is not None:
        command += ["--chunk-size", str(args.chunk_size)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def compare(args: argparse.Namespace, vocab_size: int, num_tokens: int) -> dict:
    """Reference and every other runnable implementation on one shape, with ratios and verdicts."""
    names = ["reference", "chunked"] + (["triton"] if args.device == "cuda" and "triton" in kd_implementations.keys()
                                        else [])
    results = {name: run_child(args, name, vocab_size, num_tokens) for name in names}
    naive = results["reference"]
    for name in names[1:]:
        result = results[name]
        result["memory_ratio"] = result["peak_bytes"] / naive["peak_bytes"]
        result["time_ratio"] = result["median_s"] / naive["median_s"]
        result["memory_pass"] = result["memory_ratio"] <= MEMORY_TARGET
        result["time_pass"] = result["time_ratio"] <= TIME_TARGET
    return {"vocab_size": vocab_size, "tokens": num_tokens, "hidden": HIDDEN,
            "weight_grad_accumulator_bytes": vocab_size * HIDDEN * 4, "results": results}


def tokens_for(args: argparse.Namespace, vocab_size: int) -> tuple[int, str]:
    if args.tokens is not None:
        return args.tokens, "set by --tokens"
    if args.device == "cuda":
        return GPU_TOKENS, "spec size"
    return CPU_TOKENS[vocab_size], (f"CPU: shrunk from {GPU_TOKENS} so the whole bench (4 fwd+bwd calls per side, "
                                    "4 matmuls of 2*N*d*V flops each, ~40 GFLOP/s on 2 shared cores) fits ~5 min")


def main() -> None:
    args = parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.worker:
        print(json.dumps(worker(args, getattr(torch, args.dtype), args.tokens)))
        return
    shapes = []
    for vocab_size in VOCAB_SIZES:
        num_tokens, why = tokens_for(args, vocab_size)
        shapes.append(compare(args, vocab_size, num_tokens) | {"tokens_reason": why})
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "chunk_size": args.chunk_size or default_chunk_size(HIDDEN),
        "repeats": args.repeats,
        "targets": {"memory_ratio_max": MEMORY_TARGET, "time_ratio_max": TIME_TARGET},
        "memory_method": MEMORY_METHOD,
        "shapes": shapes,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'V':>7} {'N':>5} {'impl':>9} {'time s':>8} {'peak MiB':>9} {'time x':>7} {'mem x':>6}  verdict")
    for shape in shapes:
        for name, result in shape["results"].items():
            ratios = (f"{result['time_ratio']:7.2f} {result['memory_ratio']:6.3f}  "
                      f"{'ok' if result['time_pass'] and result['memory_pass'] else 'MISSES TARGET'}"
                      if name != "reference" else f"{'1':>7} {'1':>6}  baseline")
            print(f"{shape['vocab_size']:>7} {shape['tokens']:>5} {name:>9} {result['median_s']:8.3f} "
                  f"{result['peak_bytes'] / 2**20:9.0f} {ratios}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
