"""What a family's `model.model.forward` passes to each decoder layer, without running any layer.

Every decoder layer's forward is swapped for a recorder that keeps its arguments and hands the hidden
states through unchanged; the last one stops the pass, so the final norm never runs. What comes out is
exactly what the family computes before its layers (embeddings, position_ids, rotary
position_embeddings, the causal mask of full-attention layers, the linear-attention mask, cache=None),
with no family-specific code to keep in sync with transformers.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from slim.harness.calibration.instrument import replaced_forward


@dataclass
class LayerCall:
    """The arguments of one decoder layer call: hidden_states first, then the rest."""

    hidden_states: torch.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _AllLayersRecorded(Exception):
    """Raised by the last recorder to stop the forward before the final norm."""


def decoder_layer_calls(model: PreTrainedModel, **forward_kwargs: Any) -> list[LayerCall]:
    """The call of every decoder layer of `model.model(**forward_kwargs, use_cache=False)`, in order.

    Layer l>0 is recorded with layer 0's hidden states (the layers do not run); only its other
    arguments are meaningful.
    """
    layers = model.model.layers
    calls: list[LayerCall] = []

    def recorder(*args: Any, **kwargs: Any) -> torch.Tensor:
        hidden_states = args[0] if args else kwargs.pop("hidden_states")
        calls.append(LayerCall(hidden_states, args[1:], kwargs))
        if len(calls) == len(layers):
            raise _AllLayersRecorded
        return hidden_states

    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(replaced_forward(layer, recorder))
        try:
            model.model(**forward_kwargs, use_cache=False)
        except _AllLayersRecorded:
            pass
    assert len(calls) == len(layers), f"recorded {len(calls)} of {len(layers)} decoder layer calls"
    return calls

