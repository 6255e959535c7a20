"""Calibration overhead: the one-pass `calibrate` vs a plain no-grad forward over the same batches.

    python bench/calibration.py [--checkpoint DIR] [--out bench/results/calibration.json] [model.KEY=VALUE ...]

Both sides run on the same model and batches in one process; each is warmed up once and timed as the
median of `--repeats` runs. The target is calibrate_s / plain_s <= 1.3. The plain forward is the full
causal LM (with the LM head, as evaluation runs it); `plain_base_s` times the base model without the
head, which is what `calibrate` runs, for the stricter comparison.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.calibration.collect import calibrate
from harness.config.load import load_config
from harness.config.schema import CalibrationConfig
from harness.models.build import build_model
from harness.models.io import load_pretrained

TARGET_RATIO = 1.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="teacher HF directory; default: tiny preset at random init")
    parser.add_argument("overrides", nargs="*", help="overrides of the random-init model, e.g. model.num_experts=64")
    parser.add_argument("--out", default="bench/results/calibration.json")
    parser.add_argument("--num-sequences", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--probe-tokens", type=int, default=CalibrationConfig.probe_tokens)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


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


def main() -> None:
    args = parse_args()
    if args.checkpoint:
        model, _ = load_pretrained(args.checkpoint, device=args.device)
    else:
        model = build_model(load_config(["model=tiny", *args.overrides]).model, device=args.device)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.num_sequences, args.seq_len), generator=generator)
    batches = [batch.to(args.device) for batch in ids.split(args.batch_size)]
    cfg = CalibrationConfig(batch_size=args.batch_size, probe_tokens=args.probe_tokens, device=args.device)

    @torch.no_grad()
    def plain(network: torch.nn.Module) -> None:
        for batch in batches:
            network(input_ids=batch, use_cache=False)

    seconds = median_seconds({"plain": lambda: plain(model), "plain_base": lambda: plain(model.model),
                              "calibrate": lambda: calibrate(model, batches, cfg)}, args.repeats)
    plain_s, plain_base_s, calibrate_s = seconds["plain"], seconds["plain_base"], seconds["calibrate"]
    result = {
        "plain_s": plain_s,
        "plain_base_s": plain_base_s,
        "calibrate_s": calibrate_s,
        "ratio": calibrate_s / plain_s,
        "ratio_vs_base": calibrate_s / plain_base_s,
        "target": TARGET_RATIO,
        "tokens": ids.numel(),
        "batch_size": args.batch_size,
        "probe_tokens": args.probe_tokens,
        "model": args.checkpoint or " ".join(["conf/model/tiny.yaml (random init)", *args.overrides]),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    verdict = "ok" if result["ratio"] <= TARGET_RATIO else "ABOVE TARGET"
    print(f"calibration: {calibrate_s:.3f}s vs plain forward {plain_s:.3f}s (base {plain_base_s:.3f}s) over "
          f"{ids.numel()} tokens on {args.device}: ratio {result['ratio']:.2f} "
          f"(vs base {result['ratio_vs_base']:.2f}), target <= {TARGET_RATIO} {verdict} -> {out}")


if __name__ == "__main__":
    main()
