"""The loss terms of one distillation batch (SlimQwen eq 12), computed from final-normed hidden states.

KD and MTP-KD go through a `kernels.kd_loss` implementation on flattened hidden states and LM-head
weights, so the chunked kernel never materializes full [tokens, V] logits for them; only the LM terms
build logits. Term conventions (shifted labels, per-depth means, KL not cross entropy) are those of
harness.training.loss_terms.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from harness.models.mtp import MTPModule
from harness.models.view import view
from harness.training.loss_terms import lm_loss, main_head_targets, mtp_lm_loss
from kernels.kd_loss import KDLoss

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


def kd_term(kd: KDLoss, student: torch.Tensor, teacher: torch.Tensor, student_head: torch.Tensor,
            teacher_head: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean KL(teacher || student) over all positions of [B, T', d] / [B, T', d_t] hidden states."""
    return kd(student.flatten(0, 1), teacher.flatten(0, 1), student_head, teacher_head, temperature)


def compute_terms(needs: frozenset[str], student: HiddenStates, teacher: HiddenStates | None, labels: torch.Tensor,
                  kd: KDLoss, temperature: float) -> dict[str, torch.Tensor]:
    """The terms named in `needs` ("lm", "kd", "mtp_lm", "mtp_kd"); `teacher` is required for the KD ones."""
    assert teacher is not None or not needs & KD_TERMS, "KD terms need the teacher's hidden states"
    terms = {}
    if "lm" in needs:
        terms["lm"] = lm_loss(F.linear(student.backbone, student.head_weight), labels)
    if "kd" in needs:
        terms["kd"] = kd_term(kd, student.backbone, teacher.backbone, student.head_weight, teacher.head_weight,
                              temperature)
    if "mtp_lm" in needs:
        terms["mtp_lm"] = mtp_lm_loss([F.linear(depth, student.head_weight) for depth in student.mtp], labels)
    if "mtp_kd" in needs:
        per_depth = [
            kd_term(kd, mine, theirs, student.head_weight, teacher.head_weight, temperature)
            for mine, theirs in zip(student.mtp, teacher.mtp, strict=True)
        ]
        terms["mtp_kd"] = torch.stack(per_depth).mean()
    return terms


@contextmanager
def collect_router_logits(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """Router logits [tokens, E_layer] of every MoE gate of `model`, in forward order, while the context is open.

    Forward hooks rather than `output_router_logits`: a compressed student may keep a different expert
    count per layer, which transformers' own stacked aux loss cannot handle.
    """
    collected: list[torch.Tensor] = []
    handles = [
        layer.moe.module.gate.register_forward_hook(lambda _module, _args, output: collected.append(output[0]))
        for layer in view(model).moe_layers()
    ]
    try:
        yield collected
    finally:
        for handle in handles:
            handle.remove()
