"""The four loss terms of SlimQwen eq 12: LM and KD on the backbone head, MTP-LM (eq 10) and MTP-KD (eq 11).

Conventions shared by every term:
- `labels` [B, T] are the main head's targets, already shifted: labels[:, i] = t_{i+1} for inputs[:, i].
- `mask` [B, T] (optional, bool) is aligned with `labels`: True where that label counts. Every term is
  a mean over the counted tokens, computed in float32.
- MTP depth k (list index k - 1) has logits [B, T - k, V]: position i combines h_i^{k-1} with
  Emb(t_{i+k}) and predicts t_{i+k+1} = labels[:, i + k], so depth k is scored against labels[:, k:]
  on all its T - k positions (the packed batch's labels carry the one token past the inputs).
- KD terms are the KL divergence KL(q‖p) from the teacher q to the student p. Eq 11 writes the cross
  entropy −Σ q log p; the two differ by the teacher's entropy, a constant with no gradient, and KL is 0
  at a perfect match, so the logged value is readable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per_token [B, T] over the tokens `mask` keeps (all tokens without a mask)."""
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def _shifted_mask(mask: torch.Tensor | None, depth: int) -> torch.Tensor | None:
    """The label mask of MTP depth `depth` (1-based): its position i scores labels[:, i + depth]."""
    return None if mask is None else mask[:, depth:]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_LM: mean cross entropy of logits [B, T, V] against labels [B, T]."""
    # rows of [B*T, V], not the [B, V, T] transpose: the strided class dim made it 3.1x slower fwd+bwd on CPU
    per_token = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    return _masked_mean(per_token, mask)


def kd_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_KD: mean over tokens of KL(q‖p), q = softmax(teacher / τ), p = softmax(student / τ); both logits
    [B, T, V]. As in kernels/kd_loss: no τ² factor (the caller owns every weight), the teacher is
    detached, and no kept token gives 0."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_token = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)  # [B, T]
    return _masked_mean(per_token, mask)


def mtp_lm_loss(
    mtp_logits: list[torch.Tensor], labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L_MTP-LM (eq 10): the mean over the D depths of each depth's mean cross entropy on its T - k positions."""
    per_depth = [
        lm_loss(logits, labels[:, depth:], _shifted_mask(mask, depth))
        for depth, logits in enumerate(mtp_logits, start=1)
    ]
    return torch.stack(per_depth).mean()


def mtp_kd_loss(
    student_mtp_logits: list[torch.Tensor],
    teacher_mtp_logits: list[torch.Tensor],
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_MTP-KD (eq 11, as KL): the mean over depths of KL(q‖p^k) on each depth's T - k positions.

    `teacher_mtp_logits[k - 1]` [B, T - k, V] is the teacher's distribution for the same token t_{i+k+1}:
    the teacher's own depth-k MTP logits when it has a trained MTP module, otherwise its main head
    shifted by k (`main_head_targets`).
    """
    per_depth = [
        kd_loss_from_logits(student, teacher, temperature, _shifted_mask(mask, depth))
        for depth, (student, teacher) in enumerate(zip(student_mtp_logits, teacher_mtp_logits, strict=True), start=1)
    ]
    return torch.stack(per_depth).mean()


def main_head_targets(teacher_logits: torch.Tensor, num_depths: int) -> list[torch.Tensor]:
    """MTP-KD targets from the teacher's main head: for depth k, teacher_logits[:, k:] [B, T - k, V].

    The teacher's position i + k sees t_0..t_{i+k}, the same tokens as the student's depth-k position i,
    and predicts the same token t_{i+k+1}, with the full backbone rather than a draft head.
    """
    return [teacher_logits[:, depth:] for depth in range(1, num_depths + 1)]
