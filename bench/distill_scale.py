"""One distillation step at the paper's width: tokens/s, peak memory and model FLOPs utilisation of a real 23A2B step.

    python bench/distill_scale.py                      # CPU, fp32 -> bench/results/distill_scale.json
    python bench/distill_scale.py --device cuda        # GPU, bf16-mixed -> bench/results/distill_scale_cuda.json

The teacher has Qwen3-Next-80B-A3B's layer shapes (conf/model/qwen3-next-80b-a3b.yaml: hidden 2048, 512 experts top-10,
expert width 512, Gated DeltaNet and gated-attention heads as released, vocabulary 151,936) and the student the
23A2B recipe's (conf/recipes/qwen3-next-23a2b.yaml: hidden 1536, 256 experts top-8), each `--layers` deep (4: one
period of three Gated DeltaNet layers and one attention layer) with one MTP depth. The step is the harness's own:
`DistillModule.step_loss` with the eq-12 `full` mix (teacher forward, student forward and backward, the fused
chunked head for LM, KD, MTP-LM and MTP-KD), `--batch` sequences of `--seq-len` tokens.

With `--tie-experts` (the CPU default: 48 GB of fp32 experts do not fit a 24 GiB machine) every MoE block of a model
uses one set of routed-expert weights; each block keeps its own router, so the compute is that of distinct layers
and the memory one layer's experts. That makes the step's peak memory a floor, not the real model's (`slim plan`
computes that), and may let caches serve a tied expert's second read.

Model FLOPs utilisation is the step's FLOPs (slim.harness.step_flops: per token 2 M + C forward for the teacher,
3 (2 M + C) forward and backward for the student) per second over the FLOP rate of a square matmul in the step's
compute dtype timed in the same rounds (the machine's practical peak, measured, not a datasheet number). A full-depth
step runs the same layer shapes, so its tokens/s per device is estimated as the measured FLOP rate over the
full recipe's FLOPs per token; `slim plan` prints the time the recipe's token budget takes at that rate.
Rounds interleave the step and the matmul (bench/bench_method.py); a noisy MFU is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_method import Spread, environment, interleaved, load_average, paired_ratio, refuse_noisy  # noqa: E402

from slim.harness.compression.shapes import student_shape  # noqa: E402
from slim.harness.config.load import load_config  # noqa: E402
from slim.harness.config.schema import ModelConfig  # noqa: E402
from slim.harness.models.build import build_model  # noqa: E402
from slim.harness.models.linear_attention_path import linear_attention_backend  # noqa: E402
from slim.harness.models.mtp import build_mtp  # noqa: E402
from slim.harness.models.view import moe_view, view  # noqa: E402
from slim.harness.provenance import stamped  # noqa: E402
from slim.harness.step_flops import step_flops  # noqa: E402
from slim.harness.training.distill_module import DistillModule, frozen_teacher  # noqa: E402

RECIPE = "conf/recipes/qwen3-next-23a2b-120b.yaml"
TEACHER_PRESET = "qwen3-next-80b-a3b"
MATMUL_SIZE = 4096
NOISE_BOUND = 0.25  # the MFU's rounds may spread at most this share of its median


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of teacher and student")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (CPU 1, CUDA 4)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (CPU 256, CUDA 4096)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tie-experts", action=argparse.BooleanOptionalAction, default=None,
                        help="share one set of routed-expert weights across a model's MoE blocks (CPU default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.batch = args.batch or (4 if cuda else 1)
    args.seq_len = args.seq_len or (4096 if cuda else 256)
    args.tie_experts = (not cuda) if args.tie_experts is None else args.tie_experts
    args.out = args.out or f"bench/results/distill_scale{'_cuda' if cuda else ''}.json"
    return args


def shapes(layers: int) -> tuple[ModelConfig, ModelConfig, ModelConfig, ModelConfig, int]:
    """(teacher, student at `layers` deep; teacher, student at full depth; the recipe's sequence length)."""
    cfg = load_config([f"model={TEACHER_PRESET}"], files=[RECIPE])
    recipe = cfg.compress
    student = student_shape(cfg.model, recipe.depth.num_drop, recipe.width.hidden_size, recipe.experts.num_experts,
                            recipe.experts.top_k).model
    return (dataclasses.replace(cfg.model, num_hidden_layers=layers),
            dataclasses.replace(student, num_hidden_layers=layers), cfg.model, student, cfg.data.seq_len)


def build(model_cfg: ModelConfig, tie_experts: bool, device: str, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The model and its MTP module, random init; with `tie_experts`, built with top-k experts and then given the
    full expert count: a router of its own per block, one shared set of routed-expert weights."""
    experts = model_cfg.num_experts
    small = dataclasses.replace(model_cfg, num_experts=model_cfg.num_experts_per_tok) if tie_experts else model_cfg
    model = build_model(small, device=device, dtype=dtype)
    mtp = build_mtp(model, seed=0).to(device)
    if tie_experts:
        blocks = [layer.moe for layer in view(model).moe_layers()] + [moe_view(layer.block.mlp) for layer in mtp.layers]
        first = blocks[0]
        std = model.config.initializer_range
        shared = {name: nn.Parameter(torch.randn(experts, *getattr(first, name).shape[1:], device=device,
                                                 dtype=dtype) * std)
                  for name in ("gate_up_proj", "down_proj")}
        for moe in blocks:
            moe.router_module.weight = nn.Parameter(torch.randn(experts, model_cfg.hidden_size, device=device,
                                                                dtype=dtype) * std)
            moe.module.experts.gate_up_proj, moe.module.experts.down_proj = shared["gate_up_proj"], shared["down_proj"]
            moe.router_module.num_experts = moe.module.experts.num_experts = experts
        model.config.num_experts = mtp.config.num_experts = experts
    return model, mtp


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = load_average()
    cuda = args.device == "cuda"
    teacher_cfg, student_cfg, full_teacher, full_student, recipe_seq_len = shapes(args.layers)
    precision = "bf16-mixed" if cuda else "32-true"
    cfg = load_config(["distill.loss=full", f"train.precision={precision}"])
    module = DistillModule(cfg.distill, cfg.train)
    frozen_dtype = torch.bfloat16 if cuda else torch.float32
    module.teacher = frozen_teacher(*build(teacher_cfg, args.tie_experts, args.device, frozen_dtype))
    module.student, module.student_mtp = build(student_cfg, args.tie_experts, args.device, torch.float32)
    module.to(args.device)
    vocab = student_cfg.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq_len + 1), device=args.device)
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}

    def step() -> None:
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
            loss = module.step_loss(batch).total
        loss.backward()
        module.student.zero_grad(set_to_none=True)
        module.student_mtp.zero_grad(set_to_none=True)

    square = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=args.device, dtype=frozen_dtype)

    def matmul() -> None:
        square @ square

    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    timings = interleaved({"step": step, "matmul": matmul}, rounds=args.rounds, synchronize=synchronize)
    measured = step_flops(teacher_cfg, student_cfg, args.seq_len, with_mtp=True)
    full = step_flops(full_teacher, full_student, recipe_seq_len, with_mtp=True)
    step_tokens = args.batch * args.seq_len
    step_flop = measured.total * step_tokens
    matmul_flop = 2 * MATMUL_SIZE**3
    # MFU per round: (step FLOP/s) / (matmul FLOP/s) = (step FLOP / matmul FLOP) x (matmul s / step s)
    mfu = Spread(tuple(step_flop / matmul_flop / ratio for ratio in paired_ratio(timings, "step", "matmul").values))
    refuse_noisy("model FLOPs utilisation", mfu, NOISE_BOUND)
    flop_rate = Spread(tuple(step_flop / seconds for seconds in timings["step"].values))
    backend = linear_attention_backend(args.device)
    if cuda and backend != "fla":
        raise SystemExit("distill_scale: Gated DeltaNet would run on the torch path, not flash-linear-attention; a "
                         "GPU result is only written when fla runs: install the gpu extra (Triton >= 3.7.1)")
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "precision": precision,
        "gated_deltanet": backend,
        "teacher": f"{TEACHER_PRESET}, {args.layers} layers + 1 MTP depth", "recipe": RECIPE,
        "student": f"{RECIPE} student, {args.layers} layers + 1 MTP depth", "loss": "full",
        "tie_experts": args.tie_experts, "batch": args.batch, "seq_len": args.seq_len,
        "step_seconds": timings["step"].summary(),
        "tokens_per_s": Spread(tuple(step_tokens / s for s in timings["step"].values)).summary(1),
        "flops_per_token": {"teacher_forward": measured.teacher_forward,
                            "student_forward_backward": measured.student_forward_backward},
        "achieved_flop_per_s": flop_rate.summary(-6),
        "matmul_flop_per_s": Spread(tuple(matmul_flop / s for s in timings["matmul"].values)).summary(-6),
        "mfu": mfu.summary(),
        "peak_memory_gib": round(peak_memory_bytes(args.device) / 2**30, 2),
        "full_depth": {"flops_per_token": full.total, "seq_len": recipe_seq_len,
                       "tokens_per_s_per_device": round(flop_rate.median / full.total, 1)},
        "environment": environment(args.threads, load_before),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stamped(report), indent=2) + "\n")
    print(f"{report['tokens_per_s']['median']:.1f} tokens/s at {args.layers} layers, MFU {mfu.median:.3f} "
          f"({min(mfu.values):.3f}-{max(mfu.values):.3f}), peak {report['peak_memory_gib']} GiB; full depth "
          f"{report['full_depth']['tokens_per_s_per_device']} tokens/s per device -> {args.out}")


if __name__ == "__main__":
    main()
