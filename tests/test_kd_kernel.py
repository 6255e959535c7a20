"""KD loss kernels (kernels/kd_loss): every registered implementation against the naive reference."""

from __future__ import annotations

import math

import pytest
import torch

from slim.kernels.kd_loss import kd_implementations

FAST_IMPLEMENTATIONS = [name for name in kd_implementations.keys() if name != "reference"]
NUM_TOKENS, STUDENT_DIM, TEACHER_DIM, VOCAB = 63, 32, 48, 1001


def make_inputs(dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Odd sizes (N=63, V=1001) and a teacher wider than the student; student tensors require grad."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    return {
        "student_hidden": randn(NUM_TOKENS, STUDENT_DIM).requires_grad_(),
        "teacher_hidden": randn(NUM_TOKENS, TEACHER_DIM),
        "student_head_weight": randn(VOCAB, STUDENT_DIM, scale=0.3).requires_grad_(),
        "teacher_head_weight": randn(VOCAB, TEACHER_DIM, scale=0.3),
    }


def loss_and_grads(name: str, inputs: dict[str, torch.Tensor], upstream: float = 1.0,
                   **options) -> tuple[torch.Tensor, ...]:
    """Loss and its (scaled by `upstream`) gradients w.r.t. student_hidden and student_head_weight."""
    loss = kd_implementations.get(name)(**inputs, **options)
    grads = torch.autograd.grad(loss * upstream, (inputs["student_hidden"], inputs["student_head_weight"]))
    return (loss.detach(), *grads)


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """fla-style check: max abs error relative to the expected tensor's max magnitude."""
    error = (actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12)
    assert error <= tolerance, f"relative error {error:.2e} > {tolerance:.0e}"


def keep_mask() -> torch.Tensor:
    """Drops the first 20 tokens (whole all-false chunks at chunk sizes 1 and 7) and every 3rd one."""
    mask = torch.arange(NUM_TOKENS) % 3 != 0
    mask[:20] = False
    return mask


@pytest.mark.parametrize("name", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_matches_reference_masked_temperature(name: str, chunk_size: int) -> None:
    """Loss and student grads equal the reference (fp32, 1e-5) at any chunk size, with mask and T=2."""
    inputs = make_inputs()
    options = {"temperature": 2.0, "mask": keep_mask()}
    expected = loss_and_grads("reference", inputs, upstream=3.0, **options)
    actual = loss_and_grads(name, inputs, upstream=3.0, chunk_size=chunk_size, **options)
    for got, want in zip(actual, expected):
        assert_relative_close(got, want, 1e-5)


@pytest.mark.parametrize("name", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_reference_default_chunking(name: str, reduction: str) -> None:
    """Without a mask, with the default chunk size and either reduction, results equal the reference."""
    inputs = make_inputs(seed=1)
    expected = loss_and_grads("reference", inputs, reduction=reduction)
    for got, want in zip(loss_and_grads(name, inputs, reduction=reduction), expected):
        assert_relative_close(got, want, 1e-5)


@pytest.mark.parametrize("name", kd_implementations.keys())
def test_identical_student_and_teacher_give_zero(name: str) -> None:
    """KL is 0 and the gradient vanishes when the student is the teacher (same hidden states and head)."""
    inputs = make_inputs()
    inputs["teacher_hidden"] = inputs["student_hidden"].detach().clone()
    inputs["teacher_head_weight"] = inputs["student_head_weight"].detach().clone()
    loss, grad_hidden, grad_weight = loss_and_grads(name, inputs, temperature=1.5)
    assert abs(loss.item()) < 1e-6
    assert grad_hidden.abs().max() < 1e-6 and grad_weight.abs().max() < 1e-6


@pytest.mark.parametrize("name", kd_implementations.keys())
def test_kl_is_nonnegative_per_token(name: str) -> None:
    """KL(teacher || student) >= 0 for every single token, at several temperatures."""
    inputs = make_inputs(seed=2)
    for token in range(0, NUM_TOKENS, 9):
        mask = torch.zeros(NUM_TOKENS, dtype=torch.bool)
        mask[token] = True
        for temperature in (0.5, 1.0, 4.0):
            assert kd_implementations.get(name)(**inputs, temperature=temperature, mask=mask).item() >= 0.0


@pytest.mark.parametrize("name", kd_implementations.keys())
def test_hand_computed_single_token(name: str) -> None:
    """V=3, N=1, T=2: loss = sum_v q_v log(q_v/p_v) and d loss / d h = sum_v (p_v - q_v) / T * w_v."""
    hidden = torch.tensor([[1.0]], requires_grad=True)
    head = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    teacher_hidden, teacher_head = torch.tensor([[1.0]]), torch.tensor([[0.0], [0.0], [2.0]])
    loss = kd_implementations.get(name)(hidden, teacher_hidden, head, teacher_head, temperature=2.0)
    loss.backward()
    p = [math.exp(z / 2) / sum(math.exp(y / 2) for y in (1, 2, 3)) for z in (1, 2, 3)]
    q = [math.exp(z / 2) / (2 + math.e) for z in (0, 0, 2)]
    assert loss.item() == pytest.approx(sum(qv * math.log(qv / pv) for pv, qv in zip(p, q)), rel=1e-5)
    grad_logits = [(pv - qv) / 2 for pv, qv in zip(p, q)]
    assert hidden.grad.item() == pytest.approx(sum(g * w for g, w in zip(grad_logits, (1, 2, 3))), rel=1e-5)
    assert head.grad.flatten().tolist() == pytest.approx(grad_logits, rel=1e-5)


@pytest.mark.parametrize("name", kd_implementations.keys())
def test_bfloat16_close_to_float32_reference(name: str) -> None:
    """bf16 inputs give loss and grads (in bf16) close to the fp32 reference on the same values."""
    low = make_inputs(torch.bfloat16)
    full = {key: value.detach().float().requires_grad_(value.requires_grad) for key, value in low.items()}
    expected = loss_and_grads("reference", full, mask=keep_mask())
    chunking = {} if name == "reference" else {"chunk_size": 16}
    actual = loss_and_grads(name, low, mask=keep_mask(), **chunking)
    assert actual[1].dtype == actual[2].dtype == torch.bfloat16
    for got, want in zip(actual, expected):
        assert_relative_close(got, want, 2e-2)


@pytest.mark.parametrize("name", kd_implementations.keys())
def test_teacher_receives_no_gradient(name: str) -> None:
    """Teacher tensors that require grad are treated as frozen: after backward their .grad stays None."""
    inputs = make_inputs()
    inputs["teacher_hidden"].requires_grad_()
    inputs["teacher_head_weight"].requires_grad_()
    kd_implementations.get(name)(**inputs).backward()
    assert inputs["teacher_hidden"].grad is None and inputs["teacher_head_weight"].grad is None
    assert inputs["student_hidden"].grad is not None and inputs["student_head_weight"].grad is not None


@pytest.mark.parametrize("name", kd_implementations.keys())
def test_all_tokens_masked_gives_zero(name: str) -> None:
    """With every token masked out the mean loss is 0 (not NaN) and the gradients are 0."""
    inputs = make_inputs()
    loss, grad_hidden, grad_weight = loss_and_grads(name, inputs, mask=torch.zeros(NUM_TOKENS, dtype=torch.bool))
    assert loss.item() == 0.0 and not grad_hidden.any() and not grad_weight.any()


@pytest.mark.parametrize("name", kd_implementations.keys())
def test_bad_arguments_name_the_field(name: str) -> None:
    """Unknown reduction, non-positive temperature and a wrong mask fail with ValueError naming the field."""
    inputs = make_inputs()
    loss_fn = kd_implementations.get(name)
    with pytest.raises(ValueError, match="reduction"):
        loss_fn(**inputs, reduction="none")
    with pytest.raises(ValueError, match="temperature"):
        loss_fn(**inputs, temperature=0.0)
    with pytest.raises(ValueError, match="mask"):
        loss_fn(**inputs, mask=torch.ones(NUM_TOKENS))


@pytest.mark.parametrize("name", FAST_IMPLEMENTATIONS)
def test_no_grad_gives_reference_loss(name: str) -> None:
    """Under torch.no_grad (evaluation) the loss equals the reference and carries no graph."""
    inputs = make_inputs()
    with torch.no_grad():
        loss = kd_implementations.get(name)(**inputs, chunk_size=16)
        expected = kd_implementations.get("reference")(**inputs)
    assert not loss.requires_grad
    assert_relative_close(loss, expected, 1e-5)
