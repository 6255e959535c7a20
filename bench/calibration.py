"""Calibration overhead: the one-pass `calibrate` vs a plain no-grad forward over the same batches.

    python bench/calibration.py [--checkpoint DIR] [--experts 16 128 512] [--out bench/results/calibration.json]
                                [model.KEY=VALUE ...]

All runs use the same model and batches in one process; each is warmed up once and timed as the median of
`--repeats` runs, taking turns. The target is calibrate_s / plain_s <= 1.3. The plain forward is the full
causal LM (with the LM head, as evaluation runs it, in the model's own experts implementation);
`plain_base_s` times the base model without the head, which is what `calibrate` runs, for the stricter
comparison. `calibrate_s` runs the routed experts as grouped GEMMs, `calibrate_loop_s` with the per-expert
loop reference (`slim.kernels.grouped_experts`), `calibrate_no_probe_s` without the `expert_outputs` probe (every
expert on `--probe-tokens` tokens, a fixed cost that a full-size calibration set amortizes). `--experts`
repeats all of it on random-init models with `model.num_experts` set to each count, one point each.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from slim.harness.calibration.collect import calibrate
from slim.harness.config.load import load_config
from slim.harness.config.schema import CalibrationConfig
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained
from slim.harness.provenance import stamped
from slim.kernels.grouped_experts import expert_outputs_grouped, expert_outputs_loop

TARGET_RATIO = 1.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="teacher HF directory; default: tiny preset at random init")
    parser.add_argument("overrides", nargs="*", help="overrides of the random-init model, e.g. model.num_experts=64")
    parser.add_argument("--experts", type=int, nargs="*", default=[],
                        help="expert counts to sweep on random-init models (model.num_experts=N each)")
    parser.add_argument("--out", default="bench/results/calibration.json")
    parser.add_argument("--num-sequences", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--probe-tokens", type=int, default=CalibrationConfig.probe_tokens)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 keeps timings steady on a shared machine)")
    args = parser.parse_args()
    if args.checkpoint and args.experts:
        parser.error("--experts builds random-init models; it does not apply to --checkpoint")
    return args


def median_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each run after one warm-up call each; the runs take turns in every repeat, so
    load from other processes on the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(args: argparse.Namespace, num_experts: int | None) -> torch.nn.Module:
    """The checkpoint, or the tiny preset at random init with the overrides (and `num_experts` if given)."""
    if args.checkpoint:
        model, _ = load_pretrained(args.checkpoint, device=args.device)
    else:
        experts = [] if num_experts is None else [f"model.num_experts={num_experts}"]
        model = build_model(load_config(["model=tiny", *args.overrides, *experts]).model, device=args.device)
    return model.eval()


def bench_point(model: torch.nn.Module, batches: list[torch.Tensor], cfg: CalibrationConfig, repeats: int) -> dict:
    """Seconds of each run on `model` and the ratios to the plain forward; `calibrate_no_probe` leaves out
    the `expert_outputs` probe, a fixed cost of num_experts x probe_tokens expert evaluations."""
    no_probe = dataclasses.replace(cfg, probe_tokens=0)

    @torch.no_grad()
    def plain(network: torch.nn.Module) -> None:
        for batch in batches:
            network(input_ids=batch, use_cache=False)

    seconds = median_seconds({
        "plain": lambda: plain(model), "plain_base": lambda: plain(model.model),
        "calibrate": lambda: calibrate(model, batches, cfg, expert_outputs_grouped),
        "calibrate_loop": lambda: calibrate(model, batches, cfg, expert_outputs_loop),
        "calibrate_no_probe": lambda: calibrate(model, batches, no_probe, expert_outputs_grouped)}, repeats)
    return {
        "num_experts": model.config.num_experts,
        "top_k": model.config.num_experts_per_tok,
        "experts_implementation": getattr(model.config, "_experts_implementation", None) or "eager",
        **{f"{name}_s": value for name, value in seconds.items()},
        "ratio": seconds["calibrate"] / seconds["plain"],
        "ratio_vs_base": seconds["calibrate"] / seconds["plain_base"],
        "ratio_loop": seconds["calibrate_loop"] / seconds["plain"],
        "ratio_no_probe": seconds["calibrate_no_probe"] / seconds["plain"],
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    cfg = CalibrationConfig(batch_size=args.batch_size, probe_tokens=args.probe_tokens, device=args.device)
    points = []
    for num_experts in args.experts or [None]:
        model = build(args, num_experts)
        ids = torch.randint(0, model.config.vocab_size, (args.num_sequences, args.seq_len), generator=generator)
        batches = [batch.to(args.device) for batch in ids.split(args.batch_size)]
        point = bench_point(model, batches, cfg, args.repeats)
        points.append(point)
        verdict = "ok" if point["ratio"] <= TARGET_RATIO else "ABOVE TARGET"
        print(f"E={point['num_experts']}: calibrate / plain forward {point['ratio']:.2f} (loop reference "
              f"{point['ratio_loop']:.2f}, without the probe {point['ratio_no_probe']:.2f}), target <= {TARGET_RATIO} "
              f"{verdict}; seconds: " + ", ".join(f"{key[:-2]} {value:.3f}" for key, value in point.items()
                                                  if key.endswith("_s")))
    result = {
        "points": points,
        "target": TARGET_RATIO,
        "tokens": args.num_sequences * args.seq_len,
        "batch_size": args.batch_size,
        "probe_tokens": args.probe_tokens,
        "repeats": args.repeats,
        "model": args.checkpoint or " ".join(["conf/model/tiny.yaml (random init)", *args.overrides]),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamped(result), indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
