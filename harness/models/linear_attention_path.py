"""Choose the Gated DeltaNet / causal-conv implementation by tensor device, not by what is installed.

transformers binds `torch_chunk_gated_delta_rule`, `torch_recurrent_gated_delta_rule`, `causal_conv1d_fn`
and `causal_conv1d_update` once, at import, through `use_kernel_func_from_hub_with_fallback`: when
`fla` (flash-linear-attention) or `causal_conv1d` imports, their Triton/CUDA kernels are called for
every tensor, CPU ones included, which fail there ("0 active drivers"). `install_device_dispatch`
rebinds those module globals to a dispatcher: CUDA tensors go to transformers' binding (the fast
kernel when installed), anything else to the pure-torch reference the binding keeps as `__wrapped__`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch

# Modeling modules that bind the functions below; the first is required, the others are patched when present.
PATCHED_MODULES = (
    "transformers.models.qwen3_next.modeling_qwen3_next",
    "transformers.models.qwen3_5.modeling_qwen3_5",
    "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
)
DISPATCHED_FUNCTIONS = (
    "torch_chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule",
    "causal_conv1d_fn",
    "causal_conv1d_update",
)
# Device types whose tensors may use the kernel transformers bound at import.
KERNEL_DEVICE_TYPES = frozenset({"cuda"})


def _tensor_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _device_dispatcher(bound: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap transformers' binding so only tensors on KERNEL_DEVICE_TYPES reach it."""
    reference = inspect.unwrap(bound)
    parameters = inspect.signature(reference).parameters

    @functools.wraps(reference)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        device = _tensor_device(args, kwargs)
        if device is not None and device.type in KERNEL_DEVICE_TYPES:
            return bound(*args, **kwargs)
        # The torch reference cannot keep packed sequences apart; transformers refuses them too.
        if kwargs.get("cu_seqlens") is not None or kwargs.get("seq_idx") is not None:
            raise ValueError(
                f"{reference.__name__}: packed sequences (cu_seqlens) need flash-linear-attention on CUDA; "
                f"the torch path on {device} would mix them"
            )
        return reference(*args, **{key: value for key, value in kwargs.items() if key in parameters})

    dispatch.slim_bound = bound  # type: ignore[attr-defined]
    return dispatch


def _modules() -> list[Any]:
    modules = [importlib.import_module(PATCHED_MODULES[0])]
    for name in PATCHED_MODULES[1:]:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError:
            continue
    return modules


def install_device_dispatch() -> None:
    """Rebind the linear-attention kernels of every PATCHED_MODULES module to device dispatchers (idempotent)."""
    for module in _modules():
        for name in DISPATCHED_FUNCTIONS:
            bound = getattr(module, name, None)
            if bound is not None and not hasattr(bound, "slim_bound"):
                setattr(module, name, _device_dispatcher(bound))


def linear_attention_backend(device: str | torch.device) -> str:
    """'fla' when Gated DeltaNet on `device` runs flash-linear-attention's kernel, else 'torch' (for logs)."""
    install_device_dispatch()
    if torch.device(device).type not in KERNEL_DEVICE_TYPES:
        return "torch"
    bound = _modules()[0].torch_chunk_gated_delta_rule.slim_bound
    # transformers' wrapper closes over the implementation it picked at import.
    implementation = inspect.getclosurevars(bound).nonlocals.get("implementation", inspect.unwrap(bound))
    return "fla" if implementation.__module__.split(".")[0] == "fla" else "torch"
