"""GPU smoke check (issue 12): the CUDA paths a cluster run takes, on the shipped tiny teacher, in one process.

    python bench/gpu_smoke.py [--steps 60] [--out bench/results/gpu_smoke.json]

1. flash-linear-attention's gated-delta-rule kernel against the pure-torch reference the harness uses on CPU
   (forward and every input gradient, fp32 on CUDA): fla's Hopper backward was wrong with some Triton versions.
2. `slim run` of the tiny recipe (calibrate -> compress -> distill) on CUDA, once at 32-true and once with
   bf16-mixed + the Triton KD kernel + activation checkpointing: tokens/s, peak GPU memory, final train loss and
   validation perplexity of each, and their gap.
It records which implementation ran Gated DeltaNet; when that was not flash-linear-attention the result is written
as `<out>_without_fla.json` and the script exits 1, so a torch-path run never stands as the fast path's result.
Not a CI test: run it through the device tool when a GPU is lent (`bench/gpu_smoke.sh`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import json
import tempfile
from pathlib import Path

import torch

from slim.harness.config.load import load_config
from slim.harness.models.linear_attention_path import (
    PATCHED_MODULES,
    install_device_dispatch,
    linear_attention_backend,
    torch_reference,
)
from slim.harness.pipeline import run_recipe
from slim.harness.provenance import stamped

TINY_RECIPE = ["conf/recipes/tiny-slimqwen.yaml", "ablations/tiny.yaml"]
WITHOUT_FLA = "_without_fla"  # the suffix of a result whose Gated DeltaNet took the torch path
FAST_PATH = ["train.precision=bf16-mixed", "distill.kd_kernel=triton", "train.activation_checkpointing=true"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="bench/results/gpu_smoke.json")
    return parser.parse_args()


def gated_delta_rule_check() -> dict:
    """fla kernel vs torch reference on one random problem: max relative error of the output and of each grad."""
    install_device_dispatch()
    bound = importlib.import_module(PATCHED_MODULES[0]).torch_chunk_gated_delta_rule
    reference = torch_reference(bound)
    torch.manual_seed(0)
    batch, length, heads, dim = 2, 257, 4, 64
    q, k, v = (torch.randn(batch, length, heads, dim, device="cuda") for _ in range(3))
    g = -torch.rand(batch, length, heads, device="cuda")  # log decay <= 0
    beta = torch.rand(batch, length, heads, device="cuda")
    results = {}
    for name, function in (("kernel", bound), ("reference", reference)):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
        query, key, value, g_in, beta_in = inputs
        out, _ = function(query, key, value, g=g_in, beta=beta_in, initial_state=None, output_final_state=False,
                          use_qk_l2norm_in_kernel=True)
        out.float().square().sum().backward()
        results[name] = (out.detach(), [t.grad for t in inputs])
    (out_k, grads_k), (out_r, grads_r) = results["kernel"], results["reference"]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))

    return {"backend": linear_attention_backend("cuda"), "output": rel(out_k, out_r),
            "grads": dict(zip(("q", "k", "v", "g", "beta"), (rel(a, b) for a, b in zip(grads_k, grads_r))))}


def last_logged(run_dir: Path, metric: str) -> float | None:
    """The last value of `metric` in the run's newest CSV metrics file."""
    files = sorted(run_dir.glob("**/metrics.csv"), key=lambda path: path.stat().st_mtime)
    values = [row[metric] for row in csv.DictReader(files[-1].open()) if row.get(metric)] if files else []
    return float(values[-1]) if values else None


def distill_run(name: str, work: Path, steps: int, batch_size: int, extra: list[str]) -> dict:
    """`slim run` of the tiny recipe on CUDA with `extra` overrides; throughput, memory and losses."""
    run_dir = work / name
    overrides = [f"run_dir={run_dir}", f"compress.output={run_dir}/student", f"distill.output={run_dir}/distilled",
                 f"calibration.output={run_dir}/stats.safetensors", "calibration.device=cuda",
                 "data.tokenizer=assets/tiny-teacher", "train.accelerator=gpu", f"train.max_steps={steps}",
                 f"train.batch_size={batch_size}", f"train.val_every={steps}", "tracking.wandb=false", *extra]
    torch.cuda.reset_peak_memory_stats()
    summary = run_recipe(load_config(overrides, files=TINY_RECIPE))["distill"]
    return {"overrides": extra, "tokens_per_second": summary["tokens_per_second"],
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "final_train_loss": last_logged(run_dir, "train/loss"), "val_perplexity": summary["val_perplexity"],
            "teacher_val_perplexity": summary["teacher_val_perplexity"], "steps": summary["steps"]}


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device")
    result: dict = {"benchmark": "gpu_smoke", "date": datetime.date.today().isoformat(),
                    "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for package in ("triton", "transformers", "fla"):
        module = importlib.import_module(package)
        result[package] = getattr(module, "__version__", "?")
    try:
        result["gated_delta_rule_vs_torch"] = gated_delta_rule_check()
    except RuntimeError as error:  # fla refuses its Hopper backward with Triton < 3.7.1 (fla #640)
        result["gated_delta_rule_vs_torch"] = {"refused": str(error).splitlines()[0]}
        install_device_dispatch(kernel_devices=frozenset())  # distill below on the torch path instead
    result["linear_attention_in_runs"] = linear_attention_backend("cuda")
    print(json.dumps(result["gated_delta_rule_vs_torch"]), flush=True)
    with tempfile.TemporaryDirectory() as work:
        runs = {name: distill_run(name, Path(work), args.steps, args.batch_size, extra)
                for name, extra in (("fp32", []), ("bf16_triton_ac", FAST_PATH))}
    result["runs"] = runs
    fp32, fast = runs["fp32"], runs["bf16_triton_ac"]
    result["bf16_vs_fp32"] = {
        "val_perplexity_relative_gap": fast["val_perplexity"] / fp32["val_perplexity"] - 1,
        "throughput_ratio": fast["tokens_per_second"] / fp32["tokens_per_second"],
        "peak_memory_ratio": fast["peak_memory_gib"] / fp32["peak_memory_gib"],
    }
    out = Path(args.out)
    if result["linear_attention_in_runs"] != "fla":  # never a torch-path number under the fast path's name
        out = out.with_name(f"{out.stem}{WITHOUT_FLA}{out.suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamped(result), indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if out.name != Path(args.out).name:
        raise SystemExit(f"gpu_smoke: Gated DeltaNet ran on the torch path, not flash-linear-attention; the result "
                         f"went to {out}, not {args.out}: install the gpu extra (Triton >= 3.7.1) and rerun")


if __name__ == "__main__":
    main()
