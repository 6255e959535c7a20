"""MoE block forward+backward: each transformers experts implementation against the eager per-expert loop.

    python bench/moe_block.py [--device cuda] [--experts 64 128 512] [--out bench/results/moe_block.json]

One Qwen3-Next sparse MoE block (router, routed experts, shared expert) per expert count, the same weights and
the same 4096-token batch for every implementation, in one process; the implementations take turns in every
round and each ratio is paired per round (bench/bench_method.py), so load from other processes hits them alike.
Each implementation's output and input gradient are checked against eager before it is timed. `batched_mm` gathers
one weight matrix per routed slot, so it is skipped where that copy would not fit (`--max-gather-gib`). A ratio whose
rounds spread over `--max-spread` of its median is refused. Goal (issue 15): best / eager <= 0.33 at E = 64 on CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import json
from functools import partial
from pathlib import Path

import torch
from bench_method import MIN_ROUNDS, environment, interleaved, load_average, paired_ratio, refuse_noisy
from transformers import Qwen3NextConfig
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock

from slim.harness.provenance import stamped

GOAL_RATIO_E64_CUDA = 0.33


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--experts", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, help="default: 2048 on CUDA (Qwen3-Next), 256 on CPU")
    parser.add_argument("--intermediate", type=int, help="expert width; default: 512 on CUDA (Qwen3-Next), 128 on CPU")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=MIN_ROUNDS, help="timed rounds after one warm-up round")
    parser.add_argument("--max-spread", type=float, default=0.5,
                        help="refuse a result whose best ratio's rounds spread more than this share of its median")
    parser.add_argument("--max-gather-gib", type=float, default=8.0)
    parser.add_argument("--out", default="bench/results/moe_block.json")
    return parser.parse_args()


def build_block(args: argparse.Namespace, num_experts: int) -> Qwen3NextSparseMoeBlock:
    config = Qwen3NextConfig(hidden_size=args.hidden, moe_intermediate_size=args.intermediate,
                             shared_expert_intermediate_size=args.intermediate, num_experts=num_experts,
                             num_experts_per_tok=args.top_k, norm_topk_prob=True)
    torch.manual_seed(0)
    block = Qwen3NextSparseMoeBlock(config)
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    return block.to(device=args.device, dtype=getattr(torch, args.dtype))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(block: Qwen3NextSparseMoeBlock, implementation: str,
         inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward with `implementation`; (output, input gradient)."""
    block.experts.config._experts_implementation = implementation
    block.zero_grad(set_to_none=True)
    x = inputs.detach().requires_grad_(True)
    out = block(x)
    out.float().square().mean().backward()
    return out.detach(), x.grad.detach()


def gather_gib(args: argparse.Namespace, num_experts: int) -> float:
    """Bytes batched_mm copies: one [2I, d] and one [d, I] weight per routed slot."""
    slots = args.tokens * args.top_k
    return slots * 3 * args.intermediate * args.hidden * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**30


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-30))


def bench_experts(args: argparse.Namespace, num_experts: int) -> dict:
    block = build_block(args, num_experts)
    inputs = torch.randn(1, args.tokens, args.hidden, device=args.device, dtype=getattr(torch, args.dtype))
    implementations = ["eager", *sorted(name for name in ALL_EXPERTS_FUNCTIONS if name in ("grouped_mm", "batched_mm"))]
    skipped: dict[str, str] = {}
    if gather_gib(args, num_experts) > args.max_gather_gib:
        skipped["batched_mm"] = f"gathers {gather_gib(args, num_experts):.1f} GiB of weights (> --max-gather-gib)"
    reference = step(block, "eager", inputs)
    errors = {}
    for name in [name for name in implementations if name not in skipped and name != "eager"]:
        try:
            out, grad = step(block, name, inputs)
        except (RuntimeError, NotImplementedError) as error:  # e.g. no kernel for this device / dtype, out of memory
            skipped[name] = str(error).splitlines()[0][:200]
            continue
        errors[name] = {"output": relative_error(out, reference[0]), "input_grad": relative_error(grad, reference[1])}
    timed = [name for name in implementations if name not in skipped]
    timings = interleaved({name: partial(step, block, name, inputs) for name in timed}, rounds=args.repeats,
                          synchronize=partial(synchronize, args.device))
    ratios = {name: paired_ratio(timings, name, "eager") for name in timed}
    best = min(timed, key=lambda name: ratios[name].median)
    refuse_noisy(f"E={num_experts} {best}/eager", ratios[best], args.max_spread)
    return {"num_experts": num_experts, "seconds": {name: timings[name].summary() for name in timed},
            "ratio_vs_eager": {name: ratios[name].summary() for name in timed}, "best": best,
            "best_ratio": ratios[best].median, "best_ratio_spread": ratios[best].relative_spread,
            "relative_error_vs_eager": errors, "skipped": skipped}


def main() -> None:
    args = parse_args()
    cuda = args.device.startswith("cuda")
    args.hidden = args.hidden or (2048 if cuda else 256)
    args.intermediate = args.intermediate or (512 if cuda else 128)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    load_before = load_average()
    points = []
    for num_experts in args.experts:
        point = bench_experts(args, num_experts)
        points.append(point)
        print(json.dumps({key: point[key] for key in ("num_experts", "ratio_vs_eager", "skipped")}))

    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    result = {
        "benchmark": "moe_block", "date": datetime.date.today().isoformat(), "device": device_name,
        "torch": torch.__version__, "dtype": args.dtype, "hidden_size": args.hidden,
        "moe_intermediate_size": args.intermediate, "top_k": args.top_k, "tokens": args.tokens,
        "rounds": args.repeats,
        "method": "bench/bench_method.py: implementations interleaved per round after a warm-up round; ratios paired "
        "per round, median and min-max", **environment(torch.get_num_threads(), load_before),
        "what": "forward + backward of one Qwen3-Next sparse MoE block, seconds and ratio to eager",
        "goal": f"best/eager <= {GOAL_RATIO_E64_CUDA} at E=64 on CUDA", "points": points,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stamped(result), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
