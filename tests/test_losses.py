"""Loss terms (eqs 10-12) against explicit-loop references, loss mixes (Table 3) and weight schedules."""

from __future__ import annotations

import math

import pytest
import torch

from slim.harness.errors import UserError
from slim.harness.training.loss_mixes import TERMS, LossMix, loss_mixes
from slim.harness.training.loss_terms import (
    kd_loss_from_logits,
    lm_loss,
    main_head_targets,
    mtp_kd_loss,
    mtp_lm_loss,
)
from slim.harness.training.weight_schedules import weight_schedules
from slim.kernels.kd_loss.reference import kd_loss_reference

B, T, V, D = 2, 6, 7, 2


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_total = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_total for x in row]


def _ref_ce(row: torch.Tensor, target: int) -> float:
    return -_log_softmax(row.tolist())[target]


def _ref_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    log_p = _log_softmax([x / temperature for x in student.tolist()])
    log_q = _log_softmax([x / temperature for x in teacher.tolist()])
    return sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p))


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """A packed row t_0..t_T: inputs t_0..t_{T-1}, labels t_1..t_T, plus random logits and a label mask."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (B, T + 1), generator=generator)
    return {
        "tokens": tokens,
        "labels": tokens[:, 1:],
        "student": torch.randn(B, T, V, generator=generator),
        "teacher": torch.randn(B, T, V, generator=generator),
        "student_mtp": [torch.randn(B, T - k, V, generator=generator) for k in range(1, D + 1)],
        "teacher_mtp": [torch.randn(B, T - k, V, generator=generator) for k in range(1, D + 1)],
        "mask": torch.rand(B, T, generator=generator) > 0.3,
    }


def test_lm_loss_matches_loop(batch: dict) -> None:
    """L_LM is the mean over (masked) tokens of -log softmax(logits)[label]."""
    mask = batch["mask"]
    kept = [(b, i) for b in range(B) for i in range(T) if mask[b, i]]
    expected = sum(_ref_ce(batch["student"][b, i], int(batch["labels"][b, i])) for b, i in kept) / len(kept)
    assert lm_loss(batch["student"], batch["labels"], mask).item() == pytest.approx(expected, rel=1e-5)
    everything = sum(_ref_ce(batch["student"][b, i], int(batch["labels"][b, i])) for b in range(B) for i in range(T))
    assert lm_loss(batch["student"], batch["labels"]).item() == pytest.approx(everything / (B * T), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_matches_loop(batch: dict, temperature: float) -> None:
    """L_KD is the mean over (masked) tokens of KL(softmax(teacher/τ) ‖ softmax(student/τ)), no τ² factor."""
    mask = batch["mask"]
    kept = [(b, i) for b in range(B) for i in range(T) if mask[b, i]]
    expected = sum(_ref_kl(batch["student"][b, i], batch["teacher"][b, i], temperature) for b, i in kept) / len(kept)
    loss = kd_loss_from_logits(batch["student"], batch["teacher"], temperature, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_matches_kernel_reference(batch: dict) -> None:
    """The plain KD term and kernels/kd_loss's reference agree (KL, τ, mask), so either can back L_KD."""
    generator = torch.Generator().manual_seed(1)
    student_hidden = torch.randn(B, T, 5, generator=generator)
    teacher_hidden = torch.randn(B, T, 3, generator=generator)
    student_head, teacher_head = torch.randn(V, 5, generator=generator), torch.randn(V, 3, generator=generator)
    mask = batch["mask"]
    plain = kd_loss_from_logits(student_hidden @ student_head.T, teacher_hidden @ teacher_head.T, 2.0, mask)
    kernel = kd_loss_reference(student_hidden.flatten(0, 1), teacher_hidden.flatten(0, 1), student_head, teacher_head,
                               2.0, mask.flatten())
    assert plain.item() == pytest.approx(kernel.item(), rel=1e-5)


def test_kd_loss_zero_when_student_equals_teacher(batch: dict) -> None:
    """KL is zero when the student reproduces the teacher's distribution."""
    assert kd_loss_from_logits(batch["teacher"], batch["teacher"]).item() == pytest.approx(0.0, abs=1e-6)


def test_mtp_lm_loss_matches_eq10_loop(batch: dict) -> None:
    """Eq 10: depth k position i is scored on t_{i+k+1}, averaged over its T-k positions, then over depths."""
    tokens = batch["tokens"]
    per_depth = []
    for k, logits in enumerate(batch["student_mtp"], start=1):
        losses = [_ref_ce(logits[b, i], int(tokens[b, i + k + 1])) for b in range(B) for i in range(T - k)]
        per_depth.append(sum(losses) / len(losses))
    expected = sum(per_depth) / D
    assert mtp_lm_loss(batch["student_mtp"], batch["labels"]).item() == pytest.approx(expected, rel=1e-5)


def test_mtp_lm_loss_mask_follows_labels(batch: dict) -> None:
    """The label mask is shifted with the targets: depth k position i counts iff label i+k counts."""
    tokens, mask = batch["tokens"], batch["mask"]
    per_depth = []
    for k, logits in enumerate(batch["student_mtp"], start=1):
        kept = [(b, i) for b in range(B) for i in range(T - k) if mask[b, i + k]]
        per_depth.append(sum(_ref_ce(logits[b, i], int(tokens[b, i + k + 1])) for b, i in kept) / len(kept))
    loss = mtp_lm_loss(batch["student_mtp"], batch["labels"], mask)
    assert loss.item() == pytest.approx(sum(per_depth) / D, rel=1e-5)


def test_mtp_kd_loss_matches_eq11_loop(batch: dict) -> None:
    """Eq 11 (as KL): per depth, the mean over its T-k positions of KL(q^k_i ‖ p^k_i), then over depths."""
    per_depth = []
    for k, (student, teacher) in enumerate(zip(batch["student_mtp"], batch["teacher_mtp"]), start=1):
        kls = [_ref_kl(student[b, i], teacher[b, i], 1.0) for b in range(B) for i in range(T - k)]
        per_depth.append(sum(kls) / len(kls))
    loss = mtp_kd_loss(batch["student_mtp"], batch["teacher_mtp"])
    assert loss.item() == pytest.approx(sum(per_depth) / D, rel=1e-5)


def test_main_head_targets_predict_the_same_token(batch: dict) -> None:
    """The teacher's main-head target for depth k position i is its position i+k, which predicts t_{i+k+1}."""
    targets = main_head_targets(batch["teacher"], D)
    for k, target in enumerate(targets, start=1):
        assert target.shape == (B, T - k, V)
        for i in range(T - k):
            assert torch.equal(target[:, i], batch["teacher"][:, i + k])


def test_mtp_kd_from_main_head_matches_loop(batch: dict) -> None:
    """MTP-KD against the teacher's main head uses teacher position i+k for student depth k position i."""
    per_depth = []
    for k, student in enumerate(batch["student_mtp"], start=1):
        kls = [_ref_kl(student[b, i], batch["teacher"][b, i + k], 1.0) for b in range(B) for i in range(T - k)]
        per_depth.append(sum(kls) / len(kls))
    loss = mtp_kd_loss(batch["student_mtp"], main_head_targets(batch["teacher"], D))
    assert loss.item() == pytest.approx(sum(per_depth) / D, rel=1e-5)


TERM_VALUES = {"lm": 2.0, "kd": 3.0, "mtp_lm": 5.0, "mtp_kd": 7.0}
EXPECTED_MIXES = {
    "lm": lambda t, lam, beta: t["lm"],
    "kd": lambda t, lam, beta: t["kd"],
    "kd+lm": lambda t, lam, beta: (1 - lam) * t["lm"] + lam * t["kd"],
    "kd+mtp_kd": lambda t, lam, beta: t["kd"] + beta * t["mtp_kd"],
    "kd+lm+mtp_lm": lambda t, lam, beta: (1 - lam) * t["lm"] + lam * t["kd"] + beta * t["mtp_lm"],
    "full": lambda t, lam, beta: (1 - lam) * t["lm"] + lam * t["kd"]
    + beta * ((1 - lam) * t["mtp_lm"] + lam * t["mtp_kd"]),
}


def test_registry_has_the_table3_rows() -> None:
    """The six Table 3 rows are registered under their spec keys."""
    assert set(EXPECTED_MIXES) <= set(loss_mixes.keys())


@pytest.mark.parametrize("name", sorted(EXPECTED_MIXES))
def test_mix_combines_terms_as_documented(name: str) -> None:
    """Each mix computes its documented formula from only the terms it declares."""
    mix = loss_mixes.get(name)
    terms = {term: torch.tensor(TERM_VALUES[term]) for term in mix.needs}
    for lam, beta in [(1.0, 0.3), (0.8, 0.2), (0.75, 0.1)]:
        expected = EXPECTED_MIXES[name](TERM_VALUES, lam, beta)
        assert mix(terms, lam, beta).item() == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(EXPECTED_MIXES))
def test_mix_needs_only_terms_it_uses(name: str) -> None:
    """Every declared term changes the loss at generic λ, β, so none is computed for nothing."""
    mix = loss_mixes.get(name)
    assert mix.needs <= TERMS
    terms = {term: torch.tensor(TERM_VALUES[term]) for term in mix.needs}
    base = mix(terms, 0.8, 0.2)
    for term in mix.needs:
        assert mix({**terms, term: terms[term] + 1.0}, 0.8, 0.2) != base
    assert mix.needs_mtp == bool(mix.needs & {"mtp_lm", "mtp_kd"})


@pytest.mark.parametrize("name", sorted(EXPECTED_MIXES))
def test_coefficients_reproduce_the_mix(name: str) -> None:
    """Σ coefficient × term equals the documented formula, the weights the fused head passes use."""
    mix = loss_mixes.get(name)
    for lam, beta in [(1.0, 0.3), (0.8, 0.2), (0.75, 0.1)]:
        weights = mix.coefficients(lam, beta)
        assert weights.keys() == mix.needs
        linear = sum(weight * TERM_VALUES[term] for term, weight in weights.items())
        assert linear == pytest.approx(EXPECTED_MIXES[name](TERM_VALUES, lam, beta))


def test_a_nonlinear_mix_is_refused() -> None:
    """A mix that is not linear in its terms cannot be folded into the fused head passes: said, not guessed."""
    squared = LossMix(lambda terms, lam, beta: terms["lm"] * terms["kd"], needs=frozenset({"lm", "kd"}))
    with pytest.raises(ValueError, match="not a linear combination"):
        squared.coefficients(0.5, 0.1)


def test_full_mix_reduces_to_kd_and_lm() -> None:
    """Eq 12 with λ=1, β=0 is pure KD; with λ=0, β=0 it is pure LM."""
    full = loss_mixes.get("full")
    terms = {term: torch.tensor(value) for term, value in TERM_VALUES.items()}
    assert full(terms, 1.0, 0.0).item() == TERM_VALUES["kd"]
    assert full(terms, 0.0, 0.0).item() == TERM_VALUES["lm"]


def test_unknown_mix_lists_valid_keys() -> None:
    """An unknown loss mix fails with one line naming the field and every valid key."""
    with pytest.raises(UserError) as error:
        loss_mixes.get("kd+lmm", "distill.loss_mix")
    message = str(error.value)
    assert "distill.loss_mix" in message and "\n" not in message
    assert all(key in message for key in EXPECTED_MIXES)


@pytest.mark.parametrize(
    ("name", "start", "end", "progress", "expected"),
    [
        ("linear", 1.0, 0.75, 0.0, 1.0),
        ("linear", 1.0, 0.75, 0.5, 0.875),
        ("linear", 1.0, 0.75, 1.0, 0.75),
        ("cosine", 0.3, 0.1, 0.0, 0.3),
        ("cosine", 0.3, 0.1, 0.5, 0.2),
        ("cosine", 0.3, 0.1, 1.0, 0.1),
        ("constant", 0.3, 0.1, 0.5, 0.3),
    ],
)
def test_schedule_values(name: str, start: float, end: float, progress: float, expected: float) -> None:
    """Schedules hit their endpoints and midpoints (paper: λ linear 1→0.75, β cosine 0.3→0.1)."""
    assert weight_schedules.get(name)(start, end, progress) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
def test_schedule_clamps_progress(name: str) -> None:
    """Progress outside [0, 1] gives the endpoint weights."""
    schedule = weight_schedules.get(name)
    assert schedule(1.0, 0.5, -0.3) == schedule(1.0, 0.5, 0.0)
    assert schedule(1.0, 0.5, 1.7) == schedule(1.0, 0.5, 1.0)
