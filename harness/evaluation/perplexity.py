"""Validation perplexity of a causal LM, and the unigram baseline it must beat."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader
from torchmetrics.text import Perplexity
from tqdm import tqdm


@torch.no_grad()
def model_perplexity(model: torch.nn.Module, loader: DataLoader, max_batches: int | None = None,
                     desc: str = "perplexity") -> float:
    """Token-level perplexity of `model` over `loader` batches ({"input_ids", "labels"})."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # On the model's device (no [B, T, V] copies to CPU). Never synced: every caller scores its whole loader in this
    # process (slim eval on rank 0 alone), and a synced compute() would wait on ranks that never join (a deadlock).
    metric = Perplexity(sync_on_compute=False).to(device)
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    for index, batch in enumerate(tqdm(loader, total=total, desc=desc, leave=False)):
        if index == total:
            break
        logits = model(input_ids=batch["input_ids"].to(device), use_cache=False).logits
        metric.update(logits.float(), batch["labels"].to(device))
    model.train(was_training)
    return float(metric.compute())


def unigram_perplexity(train_tokens: torch.Tensor, eval_tokens: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fit on `train_tokens`, scored on `eval_tokens`."""
    counts = torch.bincount(train_tokens.flatten(), minlength=vocab_size).double() + 1.0
    log_probs = (counts / counts.sum()).log()
    return math.exp(-log_probs[eval_tokens.flatten()].mean().item())
