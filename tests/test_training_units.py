"""Small pieces of the training loop checked against hand-computed or library references."""

import math

import pytest
import torch
from transformers.models.qwen3_next.modeling_qwen3_next import load_balancing_loss_func

from slim.harness.training.load_balance import global_batch_balance_loss
from slim.harness.training.schedule import warmup_cosine


def test_warmup_cosine_endpoints():
    """Warmup rises linearly to 1, cosine reaches the floor at the last step and stays there."""
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_balance_loss_is_one_when_uniform():
    """Uniform router probabilities and uniform assignment give exactly 1 (the minimum)."""
    logits = torch.zeros(8, 4)
    # ties: topk picks deterministically; make assignment uniform by tiny per-token offsets
    logits[torch.arange(8), torch.arange(8) % 4] = 1e-6
    loss = global_batch_balance_loss([logits], top_k=1)
    assert loss.item() == pytest.approx(1.0, abs=1e-5)


def test_balance_loss_matches_transformers_single_layer():
    """For one layer, transformers' Switch loss equals top_k times ours (it counts f over tokens, not slots)."""
    torch.manual_seed(0)
    logits = torch.randn(64, 16)
    ours = global_batch_balance_loss([logits], top_k=4)
    theirs = load_balancing_loss_func((logits,), num_experts=16, top_k=4)
    assert (4 * ours).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_balance_loss_hand_case():
    """Two tokens, two experts, top-1: E * sum_i f_i P_i computed by hand."""
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # probs [.75,.25] and [.5,.5]
    # token 0 -> expert 0, token 1 -> tie -> expert 0 (topk picks the first index)
    f = torch.tensor([1.0, 0.0])
    p = torch.tensor([0.625, 0.375])
    expected = 2 * (f * p).sum().item()
    assert global_batch_balance_loss([logits], top_k=1).item() == pytest.approx(expected)


def test_balance_loss_gradient_flows_to_router_only_through_probs():
    """The loss is differentiable w.r.t. router logits (f is a constant)."""
    logits = torch.randn(16, 8, requires_grad=True)
    global_batch_balance_loss([logits], top_k=2).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
