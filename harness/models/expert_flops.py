"""Expert-FLOPs accounting for zero-expert routing: the share of routed expert computation that is skipped.

Every routed (token, slot) pair of MoE layer l costs one SwiGLU expert, 3 matmuls of d x I_l, i.e. c_l = 6·d·I_l
FLOPs; a slot routed to a zero expert (the sentinel id E, which the experts module skips) costs nothing. Per layer
the skipped share is s_l = zero slots / (T·k_l), the mean over tokens of the per-token share; overall it is
sum_l c_l·(zero slots)_l / sum_l c_l·T·k_l over every token the model processed (all positions of the batch:
packed batches have no padding). Router, shared-expert and attention FLOPs are not counted here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from slim.harness.models.view import view


@dataclass
class ExpertFlopsCounts:
    """Routed slots seen and slots skipped per MoE layer (decoder layer index), and each layer's FLOPs per slot."""

    flops_per_slot: dict[int, int]
    slots: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, int] = field(default_factory=dict)

    def add(self, layer: int, ids: torch.Tensor, num_experts: int) -> None:
        """Count one router call's selected ids [T, k]; ids >= num_experts are zero experts."""
        self.slots[layer] = self.slots.get(layer, 0) + ids.numel()
        self.skipped[layer] = self.skipped.get(layer, 0) + int((ids >= num_experts).sum())

    def per_layer(self) -> dict[int, float]:
        return {layer: self.skipped[layer] / self.slots[layer] for layer in sorted(self.slots) if self.slots[layer]}

    def overall(self) -> float:
        total = sum(self.flops_per_slot[layer] * slots for layer, slots in self.slots.items())
        saved = sum(self.flops_per_slot[layer] * skipped for layer, skipped in self.skipped.items())
        return saved / total if total else 0.0

    def summary(self) -> dict[str, float | dict[int, float]]:
        return {"overall": self.overall(), "per_layer": self.per_layer()}


@contextmanager
def count_expert_flops(model: PreTrainedModel) -> Iterator[ExpertFlopsCounts]:
    """Count routed and skipped slots of every MoE router of `model` while the context is open (forward hooks
    on `mlp.gate`, whose third output is the selected ids [T, k]); a model without zero experts skips nothing."""
    layers = view(model).moe_layers()
    hidden = model.config.hidden_size
    counts = ExpertFlopsCounts({layer.index: 6 * hidden * layer.moe.intermediate_size for layer in layers})

    def hook(index: int, num_experts: int) -> Callable[..., None]:
        return lambda _module, _args, output: counts.add(index, output[2], num_experts)

    handles = [layer.moe.router_module.register_forward_hook(hook(layer.index, layer.moe.num_experts))
               for layer in layers]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def expert_flops_saved(model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor] | torch.Tensor]
                       ) -> dict[str, float | dict[int, float]]:
    """{"overall": share of routed expert FLOPs skipped, "per_layer": {decoder layer index: share}} of `model`
    on `batches` (dicts with "input_ids" [B, T], or the [B, T] tensors themselves); the model is left in its mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with count_expert_flops(model) as counts:
        for batch in batches:
            input_ids = batch["input_ids"] if isinstance(batch, dict) else batch
            model.model(input_ids=input_ids.to(device), use_cache=False)
    model.train(was_training)
    return counts.summary()
