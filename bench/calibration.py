"""Calibration overhead: the one-pass `calibrate` vs a plain no-grad forward over the same batches.

    python bench/calibration.py [--checkpoint DIR] [--experts 16 128 512] [--out bench/results/calibration.json]
                                [model.KEY=VALUE ...]

All runs use the same model and batches in one process, interleaved round by round after a warm-up round, ratios
paired per round (bench/bench_method.py; a headline ratio whose rounds spread over NOISE_BOUND is refused). The
target is calibrate / plain <= 1.3. The plain forward is the full causal LM (with the LM head, as evaluation runs
it, in the model's own experts implementation); `plain_base` times the base model without the head, which is what
`calibrate` runs, for the stricter comparison. `calibrate` runs the routed experts as grouped GEMMs,
`calibrate_loop` with the per-expert loop reference (`slim.kernels.grouped_experts`), `calibrate_no_probe` without
the `expert_outputs` probe (every expert on `--probe-tokens` tokens, a fixed cost that a full-size calibration set
amortizes). `--experts` repeats all of it on random-init models with `model.num_experts` set to each count, one point
each.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_method import MIN_ROUNDS, environment, interleaved, load_average, paired_ratio, refuse_noisy  # noqa: E402

from slim.harness.calibration.collect import calibrate  # noqa: E402
from slim.harness.config.load import load_config  # noqa: E402
from slim.harness.config.schema import CalibrationConfig  # noqa: E402
from slim.harness.models.build import build_model  # noqa: E402
from slim.harness.models.io import load_pretrained  # noqa: E402
from slim.harness.provenance import stamped  # noqa: E402
from slim.kernels.grouped_experts import expert_outputs_grouped, expert_outputs_loop  # noqa: E402

TARGET_RATIO = 1.3
NOISE_BOUND = 0.5  # the headline ratio's rounds may spread at most this share of its median


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
    parser.add_argument("--repeats", type=int, default=MIN_ROUNDS, help="timed rounds after one warm-up round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 keeps timings steady on a shared machine)")
    args = parser.parse_args()
    if args.checkpoint and args.experts:
        parser.error("--experts builds random-init models; it does not apply to --checkpoint")
    return args


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


def bench_point(model: torch.nn.Module, batches: list[torch.Tensor], cfg: CalibrationConfig, rounds: int) -> dict:
    """Seconds of each run on `model`, interleaved, and the ratios to the plain forward paired per round;
    `calibrate_no_probe` leaves out the `expert_outputs` probe, a fixed cost of num_experts x probe_tokens expert
    evaluations. A noisy headline ratio is refused."""
    no_probe = dataclasses.replace(cfg, probe_tokens=0)

    @torch.no_grad()
    def plain(network: torch.nn.Module) -> None:
        for batch in batches:
            network(input_ids=batch, use_cache=False)

    timings = interleaved({
        "plain": lambda: plain(model), "plain_base": lambda: plain(model.model),
        "calibrate": lambda: calibrate(model, batches, cfg, expert_outputs_grouped),
        "calibrate_loop": lambda: calibrate(model, batches, cfg, expert_outputs_loop),
        "calibrate_no_probe": lambda: calibrate(model, batches, no_probe, expert_outputs_grouped)},
        rounds=rounds, synchronize=synchronize)
    ratios = {"ratio": paired_ratio(timings, "calibrate", "plain"),
              "ratio_vs_base": paired_ratio(timings, "calibrate", "plain_base"),
              "ratio_loop": paired_ratio(timings, "calibrate_loop", "plain"),
              "ratio_no_probe": paired_ratio(timings, "calibrate_no_probe", "plain")}
    refuse_noisy(f"E={model.config.num_experts} calibrate / plain", ratios["ratio"], NOISE_BOUND)
    return {
        "num_experts": model.config.num_experts,
        "top_k": model.config.num_experts_per_tok,
        "experts_implementation": getattr(model.config, "_experts_implementation", None) or "eager",
        "seconds": {name: spread.summary() for name, spread in timings.items()},
        "ratios": {name: spread.summary() for name, spread in ratios.items()},
    }


def main() -> None:
    args = parse_args()
    load_before = load_average()
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
        ratios = {name: summary["median"] for name, summary in point["ratios"].items()}
        verdict = "ok" if ratios["ratio"] <= TARGET_RATIO else "ABOVE TARGET"
        print(f"E={point['num_experts']}: calibrate / plain forward {ratios['ratio']:.2f} (loop reference "
              f"{ratios['ratio_loop']:.2f}, without the probe {ratios['ratio_no_probe']:.2f}), target <= "
              f"{TARGET_RATIO} {verdict}; seconds: " + ", ".join(f"{name} {summary['median']:.3f}"
                                                                 for name, summary in point["seconds"].items()))
    result = {
        "points": points,
        "target": TARGET_RATIO,
        "tokens": args.num_sequences * args.seq_len,
        "batch_size": args.batch_size,
        "probe_tokens": args.probe_tokens,
        "rounds": args.repeats,
        "method": "bench/bench_method.py: the runs interleaved after a warm-up round, ratios paired per round "
                  "(median, min-max)",
        **environment(torch.get_num_threads(), load_before),
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
