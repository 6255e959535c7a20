"""Calibration statistics: everything the registered compression methods read, from one pass.

Sums, not means, are stored so that batches (and layer-by-layer passes) simply add up; the
`methods/` functions turn them into the paper's expectations. Saved as one safetensors file
whose metadata carries the fingerprint of the model it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MoELayerStats:
    """Routing and expert statistics of one MoE layer (E experts, hidden size d).

    Definitions (x ranges over calibration tokens, A(x) = top-k experts of x, z = router softmax,
    g_i(x) = gate weight actually applied to expert i (top-k renormalized when the family does so),
    E_i(x) = expert i's unweighted output):
    """

    num_tokens: int                 # tokens seen by this layer
    freq: torch.Tensor              # [E]   sum_x 1[i in A(x)]
    soft: torch.Tensor              # [E]   sum_x 1[i in A(x)] z_i(x) / sum_{j in A(x)} z_j(x)
    reap: torch.Tensor              # [E]   sum_{x: i in A(x)} g_i(x) * ||E_i(x)||_2
    ean: torch.Tensor               # [E]   sum_{x: i in A(x)} ||E_i(x)||_2
    logit_gram: torch.Tensor        # [E,E] sum_x l(x) l(x)^T, l = router logits (for cosine of logit columns)
    probe_output_sum: torch.Tensor  # [E,d] sum over probe tokens of E_i(x), for every expert i
    probe_tokens: int               # number of probe tokens summed in probe_output_sum


@dataclass
class DepthStats:
    """Per decoder layer l (input h_in = output of layer l-1, output h_out)."""

    num_tokens: int
    num_sequences: int
    token_cos_sum: torch.Tensor     # [L] sum over tokens of cos(h_in_t, h_out_t)          (block influence)
    pooled_cos_sum: torch.Tensor    # [L] sum over sequences of cos(mean_t h_in, mean_t h_out)  (eq 15, c_l)


@dataclass
class CalibrationStats:
    """All statistics of one calibration pass over a model."""

    fingerprint: str
    num_layers: int
    moe: dict[int, MoELayerStats] = field(default_factory=dict)       # layer index -> stats
    # norm name (as in ModelView.hidden_norms()) -> sum over tokens of |RMSNorm output| per hidden dim [d]
    norm_abs_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    norm_tokens: dict[str, int] = field(default_factory=dict)
    depth: DepthStats | None = None
    # What the pass read, so stats are never applied to a recipe that would calibrate on something else:
    # tokenizer_sha256 of the tokenizer and calibration_data() of the config (slim.harness.calibration.fingerprint).
    tokenizer_fingerprint: str = ""
    data_fingerprint: dict[str, str | int] = field(default_factory=dict)
