"""The fused LM + KD head pass (kernels/kd_loss/fused_head.py) against independent references: autograd through
full logits with slim.harness.training.loss_terms, a per-token loop, and identities."""

from __future__ import annotations

import pytest
import torch

from slim.harness.training.loss_terms import kd_loss_from_logits, lm_loss
from slim.kernels.kd_loss.fused_head import head_implementations

N, D, D_T, V = 37, 12, 16, 50
IMPLEMENTATIONS = head_implementations.keys()


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "student_hidden": torch.randn(N, D, generator=generator, dtype=torch.float64).requires_grad_(),
        "teacher_hidden": torch.randn(N, D_T, generator=generator, dtype=torch.float64),
        "student_head_weight": torch.randn(V, D, generator=generator, dtype=torch.float64).requires_grad_(),
        "teacher_head_weight": torch.randn(V, D_T, generator=generator, dtype=torch.float64),
        "labels": torch.randint(0, V, (N,), generator=generator),
    }


def _expected(inputs: dict, lm_weight: float, kd_weight: float, temperature: float,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(weighted total, (lm, kd), [grad hidden, grad head]) from loss_terms on full logits."""
    student_logits = (inputs["student_hidden"] @ inputs["student_head_weight"].T)[None]
    teacher_logits = (inputs["teacher_hidden"] @ inputs["teacher_head_weight"].T)[None]
    token_mask = None if mask is None else mask[None]
    lm = lm_loss(student_logits, inputs["labels"][None], token_mask)
    kd = kd_loss_from_logits(student_logits, teacher_logits, temperature, token_mask)
    total = lm_weight * lm + kd_weight * kd
    grads = torch.autograd.grad(total, [inputs["student_hidden"], inputs["student_head_weight"]])
    return total.detach(), torch.stack([lm, kd]).detach(), list(grads)


def _run(name: str, inputs: dict, **options) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    tensors = {key: value for key, value in inputs.items() if key != "labels"}
    total, values = head_implementations.get(name)(**tensors, labels=inputs["labels"], **options)
    grads = torch.autograd.grad(total, [inputs["student_hidden"], inputs["student_head_weight"]])
    return total.detach(), values, list(grads)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])  # 1.0 takes the shared log-softmax step
def test_total_values_and_gradients_equal_the_logit_reference(name: str, masked: bool, temperature: float) -> None:
    """0.3 L_LM + 0.7 L_KD, chunked over 5 rows: the total, both terms and both gradients."""
    inputs = _inputs()
    mask = (torch.arange(N) % 3 != 0) if masked else None
    chunk = {} if name == "reference" else {"chunk_size": 5}
    total, values, grads = _run(name, inputs, lm_weight=0.3, kd_weight=0.7, temperature=temperature, mask=mask,
                                **chunk)
    expected_total, expected_values, expected_grads = _expected(inputs, 0.3, 0.7, temperature, mask)
    # softmax and logs run in fp32 (the kernels' convention) on fp64 inputs: fp32 agreement
    torch.testing.assert_close(total, expected_total.to(total.dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(values, expected_values.float(), rtol=1e-6, atol=1e-7)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_one_term_alone(name: str) -> None:
    """Without labels only KD remains, without a teacher only LM; the absent term's value is 0."""
    inputs = _inputs(1)
    kd_only = head_implementations.get(name)(inputs["student_hidden"], inputs["teacher_hidden"],
                                             inputs["student_head_weight"], inputs["teacher_head_weight"],
                                             labels=None, lm_weight=0.5, kd_weight=1.0)
    lm_only = head_implementations.get(name)(inputs["student_hidden"], None, inputs["student_head_weight"], None,
                                             labels=inputs["labels"], lm_weight=1.0, kd_weight=0.5)
    _, expected_values, _ = _expected(inputs, 1.0, 1.0, 1.0, None)
    assert kd_only[1][0].item() == 0.0 and lm_only[1][1].item() == 0.0
    assert kd_only[0].item() == pytest.approx(expected_values[1].item(), rel=1e-6)
    assert lm_only[0].item() == pytest.approx(expected_values[0].item(), rel=1e-6)


def test_lm_term_equals_a_per_token_loop() -> None:
    """The chunked cross entropy is the mean over tokens of logsumexp(z) - z[label], written out by hand."""
    inputs = _inputs(2)
    _, values = head_implementations.get("chunked")(inputs["student_hidden"], None, inputs["student_head_weight"],
                                                    None, labels=inputs["labels"], lm_weight=1.0, kd_weight=0.0,
                                                    chunk_size=4)
    logits = (inputs["student_hidden"] @ inputs["student_head_weight"].T).detach()
    per_token = [torch.logsumexp(logits[i], 0) - logits[i, inputs["labels"][i]] for i in range(N)]
    assert values[0].item() == pytest.approx(torch.stack(per_token).mean().item(), rel=1e-6)


def test_identical_teacher_has_zero_kd_and_incoming_gradient_scales() -> None:
    """KD against itself is 0, and backward through 2 x total doubles every gradient."""
    inputs = _inputs(3)
    hidden, head = inputs["student_hidden"], inputs["student_head_weight"]
    total, values = head_implementations.get("chunked")(hidden, hidden, head, head, labels=inputs["labels"],
                                                        lm_weight=1.0, kd_weight=1.0, chunk_size=8)
    assert values[1].item() == pytest.approx(0.0, abs=1e-6)
    once = torch.autograd.grad(total, [hidden, head], retain_graph=True)
    twice = torch.autograd.grad(2.0 * total, [hidden, head])
    for single, double in zip(once, twice, strict=True):
        torch.testing.assert_close(double, 2.0 * single)


def test_no_grad_gives_the_same_values_without_a_graph() -> None:
    """Under no_grad (validation) the values are those of the training pass and nothing requires grad."""
    inputs = _inputs(4)
    tensors = {key: value for key, value in inputs.items() if key != "labels"}
    with_grad = head_implementations.get("chunked")(**tensors, labels=inputs["labels"], lm_weight=1.0, kd_weight=1.0)
    with torch.no_grad():
        total, values = head_implementations.get("chunked")(**tensors, labels=inputs["labels"], lm_weight=1.0,
                                                            kd_weight=1.0)
    assert not total.requires_grad
    torch.testing.assert_close(values, with_grad[1])


@pytest.mark.parametrize("change, message", [
    ({"labels": None, "teacher_hidden": None}, "no loss term"),
    ({"labels": torch.zeros(N, dtype=torch.int32)}, "labels"),
])
def test_bad_inputs_are_named(change: dict, message: str) -> None:
    inputs = {**_inputs(), **change}
    labels = inputs.pop("labels")
    with pytest.raises(ValueError, match=message):
        head_implementations.get("chunked")(**inputs, labels=labels, lm_weight=1.0, kd_weight=1.0)
