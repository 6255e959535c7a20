"""Depth surgery (SlimQwen eq 4): keep a subset of decoder layers and renumber everything that counts them."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from slim.harness.compression._kept import check_kept
from slim.harness.compression.experts import record_expert_counts
from slim.harness.config.schema import DepthTarget
from slim.harness.errors import UserError
from slim.harness.models.families import model_families
from slim.harness.models.view import view


def _renumber(layer: nn.Module, index: int) -> None:
    """Point every `layer_idx` inside `layer` (attention, Gated DeltaNet, ...) at its new cache slot."""
    for module in layer.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = index


def drop_layers(model: PreTrainedModel, kept_layers: Sequence[int]) -> None:
    """Keep decoder layers `kept_layers` (strictly increasing) in order, in place.

    Updates config.num_hidden_layers, config.layer_types, the dense-MLP layer list and the per-layer
    expert counts, and renumbers every `layer_idx` so the KV / recurrent cache of `generate` still lines up.
    """
    model_view = view(model)
    kept = check_kept(kept_layers, len(model_view.layers), "compress.depth", ordered=True)
    dense = [new for new, old in enumerate(kept) if model_view.layers[old].moe is None]
    layers = model.model.layers  # the decoder skeleton every family shares (see view.decoder_view)
    model.model.layers = nn.ModuleList([layers[old] for old in kept])
    for new, layer in enumerate(model.model.layers):
        _renumber(layer, new)
    config = model.config
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[old] for old in kept]
    if hasattr(config, "mlp_only_layers"):
        # A kept layer's new index may change its place in the `decoder_sparse_step` pattern: list dense layers.
        config.mlp_only_layers = dense
        config.decoder_sparse_step = 1
    family = model_families.get(model_view.family, "model.config.model_type")
    if family.renumber_layers is not None:
        family.renumber_layers(config, kept, dense)
    record_expert_counts(model)


def check_keeps_attention(config: PretrainedConfig, kept_layers: Sequence[int], depth: DepthTarget) -> None:
    """Refuse a cut that keeps none of a hybrid model's full-attention layers (config.layer_types), unless
    `compress.depth.allow_no_attention`: the student would be linear attention only, unlike any the paper trains."""
    types = getattr(config, "layer_types", None) or []
    attention = [index for index, kind in enumerate(types) if kind == "full_attention"]
    if not attention or len(attention) == len(types) or depth.allow_no_attention:
        return
    if not set(attention) & set(kept_layers):
        raise UserError(f"compress.depth: selector {depth.selector!r} with num_drop={depth.num_drop} drops every "
                        f"full-attention layer {attention} of this hybrid model, leaving linear attention only; "
                        "drop fewer layers, or set compress.depth.allow_no_attention=true to proceed")
