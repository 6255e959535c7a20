"""The Gated DeltaNet path by device: our dispatcher only where transformers' binding does not dispatch itself.

transformers binds its linear-attention functions in one of three shapes, which these tests build in miniature:
a wrapper that calls the kernel package for every tensor (up to 5.24), a wrapper that keeps the package's device
list and falls back to torch itself (5.25 on), and either of them inside the `nn.Module` Hugging Face's `kernels`
makes of a function. The last test runs the real installed stack on CPU, forward and backward.
"""

from __future__ import annotations

import functools
import importlib.metadata
import types

import pytest
import torch

from slim.harness.models import linear_attention_path
from slim.harness.models.build import build_model
from slim.harness.models.linear_attention_path import (
    DISPATCHED_FUNCTIONS,
    dispatches_by_device,
    install_device_dispatch,
    linear_attention_backend,
    torch_reference,
)
from tests.fixtures.model_configs import tiny_model_config, token_ids


def torch_rule(query: torch.Tensor, key: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> str:
    return "torch"


def kernel_rule(*args: object, **kwargs: object) -> str:
    """A kernel package's function: refuses CPU tensors as Triton does with no driver."""
    if any(isinstance(value, torch.Tensor) and value.device.type == "cpu" for value in (*args, *kwargs.values())):
        raise RuntimeError("0 active drivers ([]).")
    return "kernel"


kernel_rule.__module__ = "fla.ops.gated_delta_rule"


def calls_every_device(torch_function, implementation):
    """transformers <= 5.24: the implementation picked at import gets every tensor."""

    @functools.wraps(torch_function)
    def wrapped(*args, **kwargs):
        return implementation(*args, **kwargs)

    return wrapped


def dispatches_itself(torch_function, implementation, supported_devices=("cuda",)):
    """transformers >= 5.25: tensors on other devices go to the torch function."""

    @functools.wraps(torch_function)
    def wrapped(*args, **kwargs):
        device = next(value.device.type for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor))
        return (implementation if device in supported_devices else torch_function)(*args, **kwargs)

    return wrapped


def as_kernel_module(func):
    """What Hugging Face's `kernels` makes of a decorated function: an nn.Module whose forward calls it."""

    class Func(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return func(*args, **kwargs)

    return Func()


SHAPES = {
    "calls every device": (calls_every_device, False),
    "dispatches itself": (dispatches_itself, True),
    "kernel module, calls every device": (lambda t, i: as_kernel_module(calls_every_device(t, i)), False),
    "kernel module, dispatches itself": (lambda t, i: as_kernel_module(dispatches_itself(t, i)), True),
}


@pytest.fixture
def fake_modeling(monkeypatch: pytest.MonkeyPatch):
    """A modeling module in place of Qwen3-Next's whose bindings the test sets."""
    module = types.ModuleType("fake_modeling")
    monkeypatch.setattr(linear_attention_path, "_modules", lambda: [module])
    return module


@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_keywords_reach_the_torch_function_in_every_binding_shape(shape: str, fake_modeling) -> None:
    """`g` and `beta` arrive as keywords (transformers' call); whatever the shape, CPU tensors run torch with them
    and our dispatcher is installed exactly where the binding does not dispatch itself."""
    make, dispatches = SHAPES[shape]
    bound = make(torch_rule, kernel_rule)
    for name in DISPATCHED_FUNCTIONS:
        setattr(fake_modeling, name, bound)
    assert dispatches_by_device(bound) is dispatches
    assert torch_reference(bound) is torch_rule
    install_device_dispatch()
    install_device_dispatch()
    patched = fake_modeling.torch_chunk_gated_delta_rule
    assert (patched is bound) is dispatches
    cpu = torch.zeros(1)
    assert patched(cpu, cpu, g=cpu, beta=cpu) == "torch"
    assert linear_attention_backend("cpu") == "torch"
    assert linear_attention_backend("cuda") == "fla"


def test_the_torch_function_alone_is_left_as_it_is(fake_modeling) -> None:
    """Without a kernel package transformers binds its torch function in a wrapper that dispatches (5.25) or that
    calls it (older): either way CPU gives torch, CUDA reports the torch backend."""
    for make in (dispatches_itself, calls_every_device):
        fake_modeling.torch_chunk_gated_delta_rule = make(torch_rule, torch_rule)
        assert linear_attention_backend("cuda") == "torch"


def test_forcing_a_device_set_rebinds_even_a_binding_that_dispatches_itself(fake_modeling) -> None:
    """`install_device_dispatch(frozenset())` routes every device to torch (the GPU smoke's fallback when fla
    refuses the hardware), over a binding of either shape."""
    bound = dispatches_itself(torch_rule, kernel_rule)
    fake_modeling.torch_chunk_gated_delta_rule = bound
    install_device_dispatch(kernel_devices=frozenset())
    assert fake_modeling.torch_chunk_gated_delta_rule.slim_bound is bound
    assert linear_attention_backend("cuda") == "torch"


INSTALLED_KERNEL_STACK = ("kernels", "triton", "flash-linear-attention")  # distributions: `kernels` is also our folder


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not all(map(installed, INSTALLED_KERNEL_STACK)),
                    reason="needs Hugging Face kernels, triton and flash-linear-attention (the locked test install)")
def test_cpu_forward_and_backward_with_the_kernel_stack_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HF kernels, triton and fla importable, the tiny model trains on CPU through the torch path, and its
    logits and gradients equal those with every binding forced to the pure-torch reference."""
    for module in linear_attention_path._modules():  # restored after the forced rebinding below
        for function in DISPATCHED_FUNCTIONS:
            if hasattr(module, function):
                monkeypatch.setattr(module, function, getattr(module, function))
    assert linear_attention_backend("cpu") == "torch"

    def forward_backward() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = build_model(tiny_model_config(), seed=0)
        logits = model(token_ids(tiny_model_config())).logits
        logits.float().square().mean().backward()
        return logits.detach(), [parameter.grad for parameter in model.parameters() if parameter.grad is not None]

    logits, grads = forward_backward()
    install_device_dispatch(kernel_devices=frozenset())
    reference_logits, reference_grads = forward_backward()
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, reference_logits)
    assert len(grads) == len(reference_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads))
