"""The loss terms of one distillation batch (SlimQwen eq 12), computed from final-normed hidden states.

Each head's two terms (LM + KD on the backbone, MTP-LM + MTP-KD on each MTP depth) go through one
`slim.kernels.kd_loss.fused_head` pass on flattened hidden states and LM-head weights at the loss mix's weights,
so full [tokens, V] logits never exist. Term conventions (shifted labels, per-depth means, KL not cross
entropy) are those of slim.harness.training.loss_terms, the logit-level reference the tests compare against.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from slim.harness.models.mtp import MTPModule
from slim.harness.models.view import view
from slim.harness.training.loss_terms import main_head_targets
from slim.kernels.kd_loss.fused_head import HeadLoss

KD_TERMS = frozenset({"kd", "mtp_kd"})


@dataclass
class HiddenStates:
    """One model on one batch: backbone h^0 [B, T, d], MTP depth k output-normed h^k [B, T-k, d], head [V, d]."""

    backbone: torch.Tensor
    mtp: list[torch.Tensor]
    head_weight: torch.Tensor


def backbone_hidden(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states [B, T, d]: the LM head's input, and h^0 of the MTP module (eq 9)."""
    return model.model(input_ids=input_ids, use_cache=False).last_hidden_state


def mtp_hidden(model: PreTrainedModel, mtp: MTPModule, hidden: torch.Tensor,
               input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Each MTP depth's output-normed hidden states, depth k [B, T-k, d]: the module run with an identity
    head, so the shared LM head is applied by the caller or inside a KD kernel."""
    model_view = view(model)
    return mtp(hidden, input_ids, model_view.embed_tokens, nn.Identity(), model.model.rotary_emb)


def hidden_states(model: PreTrainedModel, mtp: MTPModule | None, input_ids: torch.Tensor,
                  mtp_depth: int = 0) -> HiddenStates:
    """Backbone and, for `mtp_depth` > 0, MTP hidden states. Without an MTP module the depth-k targets are
    the backbone's own positions k.. (`main_head_targets`), as for a teacher that has no MTP module."""
    hidden = backbone_hidden(model, input_ids)
    if mtp_depth == 0:
        depths: list[torch.Tensor] = []
    elif mtp is None:
        depths = main_head_targets(hidden, mtp_depth)
    else:
        depths = mtp_hidden(model, mtp, hidden, input_ids)[:mtp_depth]
    return HiddenStates(hidden, depths, model.get_output_embeddings().weight)


def _flat(hidden: torch.Tensor | None) -> torch.Tensor | None:
    return None if hidden is None else hidden.flatten(0, 1)


def head_terms(head: HeadLoss, weights: Mapping[str, float], student: HiddenStates, teacher: HiddenStates | None,
               labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ weight × term, each term's value) over the terms in `weights` ("lm", "kd", "mtp_lm", "mtp_kd"): one
    fused pass per head, the backbone's for LM + KD and each MTP depth's for MTP-LM + MTP-KD, so no [tokens, V]
    logits exist and each head's matmul runs once per chunk. MTP terms are means over depths, so depth k
    carries weight / D. `teacher` is required for the KD terms."""
    assert teacher is not None or not weights.keys() & KD_TERMS, "KD terms need the teacher's hidden states"
    total = student.backbone.new_zeros((), dtype=torch.float32)
    values: dict[str, torch.Tensor] = {}
    heads = [("lm", "kd", student.backbone, None if teacher is None else teacher.backbone, labels, 1)]
    heads += [("mtp_lm", "mtp_kd", mine, None if teacher is None or k > len(teacher.mtp) else teacher.mtp[k - 1],
               labels[:, k:], len(student.mtp)) for k, mine in enumerate(student.mtp, start=1)]
    for lm_name, kd_name, hidden, teacher_hidden, head_labels, depths in heads:
        if lm_name not in weights and kd_name not in weights:
            continue
        with_kd = kd_name in weights
        head_total, head_values = head(
            _flat(hidden), _flat(teacher_hidden) if with_kd else None, student.head_weight,
            teacher.head_weight if with_kd else None, labels=head_labels.flatten() if lm_name in weights else None,
            lm_weight=weights.get(lm_name, 0.0) / depths, kd_weight=weights.get(kd_name, 0.0) / depths,
            temperature=temperature)
        total = total + head_total
        for name, value in zip((lm_name, kd_name), head_values, strict=True):
            if name in weights:
                values[name] = values.get(name, 0.0) + value / depths
    return total, values


@contextmanager
def collect_router_logits(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """Router logits [tokens, E_layer] of every MoE gate of `model`, in forward order, while the context is open.

    Forward hooks rather than `output_router_logits`: a compressed student may keep a different expert
    count per layer, which transformers' own stacked aux loss cannot handle.
    """
    collected: list[torch.Tensor] = []
    handles = [
        layer.moe.router_module.register_forward_hook(lambda _module, _args, output: collected.append(output[0]))
        for layer in view(model).moe_layers()
    ]
    try:
        yield collected
    finally:
        for handle in handles:
            handle.remove()
