"""MTP speculative-decoding acceptance rates acc_0..acc_{K-1} (SlimQwen Table 4, appendix A.3).

Greedy self-speculative decoding: the backbone verifies, the MTP module drafts K tokens at a time. After
the backbone has produced token t_{i+1} (from position i), draft depth d = 1..K proposes token t_{i+d+1};
the verifier accepts drafts left to right while each equals its own greedy token at position i+d and stops
at the first mismatch. acc_j is the fraction of positions i at which the first j+1 drafts are all accepted
("acc_0: one token generated with the MTP module, acc_1: two tokens, ..."), so acc_0 >= acc_1 >= ...;
1 + sum_j acc_j is the mean number of tokens per verification step.

Computed in one teacher-forced pass over the model's own greedy continuation s of held-out prompts: there
s_{i+1} is the backbone's greedy token after position i, so the depth-d draft at position i, which sees
s_0..s_{i+d}, is exactly what decoding would draft once drafts 1..d-1 were accepted (a rejected draft ends
the chain, so what a wrong draft would have been fed never matters). `tests/test_evaluation.py` checks this
against a brute-force decoding loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from slim.harness.models.mtp import MTPModule, run_mtp

# (h^0 [B, T, d], input_ids [B, T]) -> depth d = 1..K logits [B, T-d, V]; position i of depth d predicts
# token i+d+1 having seen tokens 0..i+d (the MTPModule convention).
Drafter = Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]


def chained_mtp(mtp: MTPModule, num_draft: int) -> MTPModule:
    """`mtp` with `num_draft` depths: depth d runs layer min(d, D), so the last layer is reused recursively
    beyond D (as Qwen3-Next's single MTP layer drafts several tokens). Parameters are shared, not copied."""
    chained = copy.copy(mtp)
    layers = [mtp.layers[min(depth, len(mtp.layers)) - 1] for depth in range(1, num_draft + 1)]
    chained._modules = {**mtp._modules, "layers": nn.ModuleList(layers)}
    return chained


def mtp_drafter(model: PreTrainedModel, mtp: MTPModule, num_draft: int) -> Drafter:
    """The model's MTP module as a K-token drafter."""
    chained = chained_mtp(mtp, num_draft)
    return lambda hidden, input_ids: run_mtp(model, chained, hidden, input_ids)


@torch.no_grad()
def greedy_continuation(model: PreTrainedModel, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """prompts [B, P] -> [B, P + new_tokens]: the model's greedy continuation (KV-cache generate)."""
    return model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


@torch.no_grad()
def accepted_lengths(model: PreTrainedModel, drafter: Drafter, sequences: torch.Tensor, start: int,
                     num_draft: int) -> torch.Tensor:
    """Number of accepted drafts (0..K) at every position i in [start, T-K) of `sequences` [B, T] -> [B, T-K-start]."""
    seq_len = sequences.shape[1]
    hidden = model.model(input_ids=sequences, use_cache=False).last_hidden_state  # [B, T, d]
    greedy = model.get_output_embeddings()(hidden).argmax(-1)  # [B, T]: the verifier's token after each position
    end = seq_len - num_draft
    accepted = torch.ones(sequences.shape[0], end - start, dtype=torch.bool, device=sequences.device)
    lengths = torch.zeros_like(accepted, dtype=torch.long)
    for depth, logits in enumerate(drafter(hidden, sequences)[:num_draft], start=1):
        draft = logits[:, start:end].argmax(-1)  # depth-d drafts at positions start..end-1
        accepted &= draft == greedy[:, start + depth:end + depth]
        lengths += accepted.long()
    return lengths


def acceptance_rates(model: PreTrainedModel, drafter: Drafter, prompts: torch.Tensor, new_tokens: int,
                     num_draft: int) -> list[float]:
    """acc_0..acc_{K-1} over the greedy continuations of `prompts` [B, P]: every position whose drafts all
    fall inside the continuation (i from P-1 to P+new_tokens-K-1) counts once."""
    if new_tokens <= num_draft:
        raise ValueError(f"new_tokens ({new_tokens}) must exceed the number of drafts ({num_draft})")
    was_training = model.training
    model.eval()
    sequences = greedy_continuation(model, prompts, new_tokens)
    lengths = accepted_lengths(model, drafter, sequences, prompts.shape[1] - 1, num_draft)
    model.train(was_training)
    return [(lengths > j).double().mean().item() for j in range(num_draft)]
