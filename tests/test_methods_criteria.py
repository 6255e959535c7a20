"""Expert criteria and similarities against a brute-force per-token, per-expert reference loop."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from slim.harness.calibration.stats import MoELayerStats
from slim.harness.compression.expert_criteria import criteria
from slim.harness.compression.expert_similarities import similarities
from slim.harness.errors import UserError

E, K, D, INTER, T, PROBE = 6, 2, 5, 3, 40, 7
LOGIT_BIAS = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, -50.0], dtype=torch.float64)  # uneven routing; E-1 never


def tiny_moe(seed: int = 0) -> SimpleNamespace:
    """A stand-in MoEView: router [E, d], gate_up_proj [E, 2I, d], down_proj [E, d, I]."""
    gen = torch.Generator().manual_seed(seed)
    return SimpleNamespace(router=torch.randn(E, D, generator=gen, dtype=torch.float64),
                           gate_up_proj=torch.randn(E, 2 * INTER, D, generator=gen, dtype=torch.float64),
                           down_proj=torch.randn(E, D, INTER, generator=gen, dtype=torch.float64),
                           num_experts=E, top_k=K)


def expert_output(moe: SimpleNamespace, expert: int, x: torch.Tensor) -> torch.Tensor:
    gate, up = (moe.gate_up_proj[expert] @ x).chunk(2)
    return moe.down_proj[expert] @ (F.silu(gate) * up)


def brute_force(moe: SimpleNamespace, seed: int = 1) -> tuple[MoELayerStats, dict[str, torch.Tensor], dict]:
    """Stats accumulated token by token, plus the eq 6/7 expectations and raw columns computed in the same loop."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(T, D, generator=gen, dtype=torch.float64)
    sums = {name: torch.zeros(E, dtype=torch.float64) for name in ("freq", "soft", "reap", "ean")}
    per_token = {name: [[] for _ in range(E)] for name in ("freq", "soft", "ean")}
    reap_on_routed = [[] for _ in range(E)]
    logit_gram = torch.zeros(E, E, dtype=torch.float64)
    logit_columns = [[] for _ in range(E)]
    for x in tokens:
        logits = moe.router @ x + LOGIT_BIAS
        z = torch.softmax(logits, dim=0)
        chosen = torch.topk(z, K).indices.tolist()
        top_mass = sum(float(z[j]) for j in chosen)
        for i in range(E):
            logit_columns[i].append(float(logits[i]))
            for j in range(E):
                logit_gram[i, j] += logits[i] * logits[j]
            routed = i in chosen
            gate = float(z[i]) / top_mass if routed else 0.0
            norm = float(expert_output(moe, i, x).norm()) if routed else 0.0
            per_token["freq"][i].append(1.0 if routed else 0.0)
            per_token["soft"][i].append(gate)
            per_token["ean"][i].append(norm)
            if routed:
                reap_on_routed[i].append(gate * norm)
                sums["freq"][i] += 1.0
                sums["soft"][i] += gate
                sums["reap"][i] += gate * norm
                sums["ean"][i] += norm
    probes = torch.randn(PROBE, D, generator=gen, dtype=torch.float64)
    probe_outputs = [[expert_output(moe, i, x) for x in probes] for i in range(E)]
    stats = MoELayerStats(num_tokens=T, logit_gram=logit_gram, probe_tokens=PROBE,
                          probe_output_sum=torch.stack([torch.stack(outs).sum(0) for outs in probe_outputs]), **sums)
    expected = {name: torch.tensor([sum(v) / len(v) for v in values]) for name, values in per_token.items()}
    expected["reap"] = torch.tensor([sum(v) / len(v) if v else 0.0 for v in reap_on_routed])
    raw = {"logit_columns": torch.tensor(logit_columns),
           "mean_outputs": torch.stack([torch.stack(outs).mean(0) for outs in probe_outputs])}
    return stats, expected, raw


@pytest.fixture(scope="module")
def case():
    moe = tiny_moe()
    stats, expected, raw = brute_force(moe)
    return moe, stats, expected, raw


def pairwise_cosine(rows: torch.Tensor) -> torch.Tensor:
    """Reference: one F.cosine_similarity call per pair."""
    n = rows.shape[0]
    return torch.tensor([[float(F.cosine_similarity(rows[i], rows[j], dim=0)) for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("name", ["freq", "soft", "reap", "ean"])
def test_statistics_criteria_match_per_token_expectation(case, name):
    """freq/soft/ean are token means of the per-token quantity, reap the mean over routed tokens (eqs 6-7)."""
    moe, stats, expected, _ = case
    torch.testing.assert_close(criteria.get(name)(stats, moe), expected[name].double())


def test_reap_is_zero_for_a_never_routed_expert(case):
    """An expert outside every top-k scores 0 under reap (no division by zero)."""
    moe, stats, _, _ = case
    assert stats.freq[E - 1] == 0
    assert criteria.get("reap")(stats, moe)[E - 1] == 0.0


def test_weight_norm_matches_manual_norm(case):
    """weight_norm is the Frobenius norm of the expert's gate_up and down weights together."""
    moe = case[0]
    manual = [math.sqrt(sum(float(w) ** 2 for w in torch.cat([moe.gate_up_proj[e].flatten(),
                                                              moe.down_proj[e].flatten()]))) for e in range(E)]
    torch.testing.assert_close(criteria.get("weight_norm")(None, moe), torch.tensor(manual, dtype=torch.float64))


@pytest.mark.parametrize("name", ["freq", "soft", "reap", "ean"])
def test_statistics_criteria_need_stats(name):
    """A criterion that reads calibration statistics fails with one line naming compress.experts.criterion when
    given none."""
    with pytest.raises(UserError, match="compress.experts.criterion"):
        criteria.get(name)(None, tiny_moe())


@pytest.mark.parametrize("name,reference", [
    ("router_logits", lambda moe, raw: pairwise_cosine(raw["logit_columns"])),
    ("router_weights", lambda moe, raw: pairwise_cosine(moe.router)),
    ("expert_outputs", lambda moe, raw: pairwise_cosine(raw["mean_outputs"])),
])
def test_similarity_matches_pairwise_cosine(case, name, reference):
    """Each similarity equals the explicit pairwise cosine of its vectors, is symmetric, with unit diagonal."""
    moe, stats, _, raw = case
    sim = similarities.get(name)(stats, moe)
    torch.testing.assert_close(sim, reference(moe, raw).double())
    torch.testing.assert_close(sim, sim.T)
    torch.testing.assert_close(sim.diagonal(), torch.ones(E, dtype=torch.float64))


def test_similarity_of_zero_vector_is_finite():
    """A zero router row yields cosine 0 to the others and 1 on the diagonal, never NaN."""
    moe = tiny_moe()
    moe.router[2] = 0.0
    sim = similarities.get("router_weights")(None, moe)
    assert torch.isfinite(sim).all()
    assert sim[2, 2] == 1.0 and (sim[2, [0, 1, 3, 4, 5]] == 0).all()


def test_unknown_criterion_lists_valid_keys():
    """An unknown key fails with a one-line UserError naming the field and every valid key."""
    with pytest.raises(UserError, match="compress.experts.criterion.*valid: ean, freq, reap, soft, weight_norm"):
        criteria.get("reep", "compress.experts.criterion")
