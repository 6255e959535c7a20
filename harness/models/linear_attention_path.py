"""Choose the Gated DeltaNet / causal-conv implementation by tensor device, not by what is installed.

transformers binds `torch_chunk_gated_delta_rule`, `torch_recurrent_gated_delta_rule`, `causal_conv1d_fn` and
`causal_conv1d_update` once, at import, through `use_kernel_func_from_hub_with_fallback`. Where Hugging Face's
`kernels` package is installed, that binding is an `nn.Module` whose forward calls transformers' wrapper function.

Newer transformers (5.25 on) keep the kernel package's supported device types in that wrapper and send any other
tensor to the pure-torch reference themselves: their binding is used as it is. Older ones call the kernel (fla's
Triton code, causal_conv1d's CUDA code) for every tensor once it imports, CPU tensors included, which fail there
("0 active drivers"). For those, `install_device_dispatch` rebinds the module globals to a dispatcher: CUDA tensors
go to transformers' binding, anything else to the torch reference the wrapper keeps as `__wrapped__`. Which case
applies is read off the bound wrapper itself, never off a version string.
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
# Device types whose tensors may use the kernel transformers bound at import, where our dispatcher decides.
KERNEL_DEVICE_TYPES = frozenset({"cuda"})


def _tensor_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _transformers_wrapper(bound: Callable[..., Any]) -> Callable[..., Any]:
    """transformers' wrapper function behind `bound`: `bound` itself, or the function that the `nn.Module` made of it
    by Hugging Face's `kernels` calls from its forward."""
    if isinstance(bound, torch.nn.Module):
        wrapped = inspect.getclosurevars(type(bound).forward).nonlocals.get("func")
        if wrapped is None:
            raise TypeError(f"{type(bound).__qualname__}: a kernel module whose forward calls no wrapped function")
        return wrapped
    return bound


def _wrapper_state(bound: Callable[..., Any]) -> dict[str, Any]:
    """The variables transformers' wrapper closes over (`implementation`, and `supported_devices` where it
    dispatches by device)."""
    return inspect.getclosurevars(_transformers_wrapper(bound)).nonlocals


def dispatches_by_device(bound: Callable[..., Any]) -> bool:
    """Whether transformers' binding already sends tensors on devices its kernel package cannot run on to the torch
    reference: its wrapper then holds that package's device list."""
    return "supported_devices" in _wrapper_state(bound)


def _kernel_device_types(bound: Callable[..., Any]) -> frozenset[str]:
    """Device types whose tensors reach the kernel package through `bound`, a binding as install_device_dispatch
    leaves it: our dispatcher's set, or the device list of a wrapper that dispatches itself."""
    if hasattr(bound, "slim_kernel_devices"):
        return bound.slim_kernel_devices
    return frozenset(_wrapper_state(bound).get("supported_devices") or ())


def torch_reference(bound: Callable[..., Any]) -> Callable[..., Any]:
    """The pure-torch function behind a binding (transformers' wrapper keeps it as `__wrapped__`)."""
    return inspect.unwrap(_transformers_wrapper(getattr(bound, "slim_bound", bound)))


def _device_dispatcher(bound: Callable[..., Any], kernel_devices: frozenset[str]) -> Callable[..., Any]:
    """Wrap transformers' binding so only tensors on `kernel_devices` reach it."""
    reference = torch_reference(bound)
    parameters = inspect.signature(reference).parameters

    @functools.wraps(reference)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        device = _tensor_device(args, kwargs)
        if device is not None and device.type in kernel_devices:
            return bound(*args, **kwargs)
        # The torch reference cannot keep packed sequences apart; transformers refuses them too.
        if kwargs.get("cu_seqlens") is not None or kwargs.get("seq_idx") is not None:
            raise ValueError(
                f"{reference.__name__}: packed sequences (cu_seqlens) need flash-linear-attention on CUDA; "
                f"the torch path on {device} would mix them"
            )
        return reference(*args, **{key: value for key, value in kwargs.items() if key in parameters})

    dispatch.slim_bound = bound  # type: ignore[attr-defined]
    dispatch.slim_kernel_devices = kernel_devices  # type: ignore[attr-defined]
    return dispatch


def _modules() -> list[Any]:
    modules = [importlib.import_module(PATCHED_MODULES[0])]
    for name in PATCHED_MODULES[1:]:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError:
            continue
    return modules


def install_device_dispatch(kernel_devices: frozenset[str] | None = None) -> None:
    """Rebind the linear-attention functions of every PATCHED_MODULES module whose binding does not dispatch by
    device itself to a dispatcher that sends only KERNEL_DEVICE_TYPES tensors to the kernel (idempotent).

    `kernel_devices` given: rebind every binding, whatever it does, so that exactly those device types reach the
    kernel (`frozenset()` routes everything to the torch reference, e.g. where the kernel is refused)."""
    for module in _modules():
        for name in DISPATCHED_FUNCTIONS:
            bound = getattr(module, name, None)
            if bound is None:
                continue
            original = getattr(bound, "slim_bound", bound)
            if kernel_devices is not None:
                setattr(module, name, _device_dispatcher(original, kernel_devices))
            elif original is bound and not dispatches_by_device(bound):
                setattr(module, name, _device_dispatcher(bound, KERNEL_DEVICE_TYPES))


def linear_attention_backend(device: str | torch.device) -> str:
    """'fla' when Gated DeltaNet on `device` runs flash-linear-attention's kernel, else 'torch' (for logs)."""
    install_device_dispatch()
    bound = _modules()[0].torch_chunk_gated_delta_rule
    if torch.device(device).type not in _kernel_device_types(bound):
        return "torch"
    implementation = _wrapper_state(getattr(bound, "slim_bound", bound)).get("implementation")
    return "fla" if implementation is not None and implementation.__module__.split(".")[0] == "fla" else "torch"
