"""One experts implementation for every model a command runs: `model_runtime.experts_implementation`.

transformers' MoE experts modules (qwen3_next, qwen3_moe, olmoe, mixtral) dispatch at every forward on
`config._experts_implementation`: "eager" (a GEMM pair per expert hit), "grouped_mm" (two grouped GEMMs over all
experts), "batched_mm" or a CUDA kernel it registers. "auto" resolves to grouped_mm where torch runs the grouped
GEMM natively on the device for every expert weight dtype (CPU: torch >= 2.9, float32 / bfloat16 / float16; CUDA:
compute capability >= 8.0, the check transformers makes before calling it), else eager. grouped_mm runs a MoE block's
forward + backward in 0.66x (CPU) / 0.072x (H200) of eager's time at E = 64, 0.17x / 0.046x at E = 128
(bench/results/moe_block*.json).

The choice is written on the config of every experts module, so a model and its MTP module (whose decoder blocks
hold a copy of the model's config, slim.harness.models.mtp.block_config) always run the same implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

AUTO = "auto"
GROUPED_MM = "grouped_mm"
EAGER = "eager"


def experts_modules(*modules: nn.Module | None) -> list[nn.Module]:
    """Every transformers experts module inside `modules`: those `use_experts_implementation` wrapped, which carry
    the config they dispatch on."""
    return [module for root in modules if root is not None for module in root.modules()
            if hasattr(module, "_is_expert_parallel") and hasattr(module, "config")]


def implementations_in(*modules: nn.Module | None) -> set[str | None]:
    """The implementations the experts modules inside `modules` run (one, once the policy is applied)."""
    return {module.config._experts_implementation for module in experts_modules(*modules)}


@functools.cache
def grouped_mm_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's grouped GEMM runs natively on `device` for `dtype` weights: the kernel exists, the device
    is a CPU or a CUDA device of compute capability >= 8.0, and a tiny grouped GEMM there succeeds."""
    kernel = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    if kernel is None or device.type not in ("cpu", "cuda"):
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return False
    x = torch.ones(16, 16, device=device, dtype=dtype)
    weights = torch.ones(2, 16, 16, device=device, dtype=dtype)
    try:
        kernel(x, weights, offs=torch.tensor([8, 16], device=device, dtype=torch.int32))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def resolve_experts_implementation(requested: str, device: torch.device | str, dtypes: Iterable[torch.dtype]) -> str:
    """`requested` itself, or for "auto": grouped_mm when it runs natively on `device` for every dtype in `dtypes`,
    else eager. `requested` was checked against transformers' registry when the config was loaded."""
    if requested != AUTO:
        return requested
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return GROUPED_MM if all(grouped_mm_runs(device, dtype) for dtype in set(dtypes)) else EAGER


def apply_experts_policy(requested: str, *modules: nn.Module | None, device: torch.device | str | None = None) -> str:
    """Resolve `requested` for the device the modules run on (`device`; default: where their expert weights are)
    and their expert weight dtypes, set it on every experts module inside `modules` (a model, its MTP module, a
    teacher...), and return it."""
    experts = experts_modules(*modules)
    weights = [weight for module in experts for weight in module.parameters(recurse=False)]
    if device is None:
        device = weights[0].device if weights else torch.device("cpu")
    implementation = resolve_experts_implementation(requested, device, {weight.dtype for weight in weights})
    for config in {id(module.config): module.config for module in experts}.values():
        config._experts_implementation = implementation
    return implementation
