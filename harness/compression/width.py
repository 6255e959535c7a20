"""Width surgery (SlimQwen eq 5): keep a subset of hidden dims everywhere the model width appears.

Which parameter dims are the width is declared per family (`ModelFamily.hidden_dims`), never guessed
from sizes: in the tiny preset the shared-expert width equals the hidden size. Heads keep their size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from slim.harness.compression._kept import check_kept
from slim.harness.errors import UserError
from slim.harness.models.families import model_families

LAYER_INDEX = re.compile(r"(?<=^model\.layers\.)\d+(?=\.)")
# Module attributes that hold the model width in transformers' MoE modules (decoder layers, routers,
# packed experts, Gated DeltaNet, MLPs).
WIDTH_ATTRIBUTES = ("hidden_size", "hidden_dim")


def hidden_dims(family: str) -> Mapping[str, int]:
    """The family's table: parameter name with the layer index written `*` -> its width dim."""
    table = model_families.get(family).hidden_dims
    if table is None:
        supported = [key for key in model_families.keys() if model_families.get(key).hidden_dims is not None]
        raise UserError(f"compress.width.hidden_size: width pruning is not supported for family {family!r} (its "
                        f"attention sizes follow the width, so the heads would shrink too); allowed: 0 (keep the "
                        f"width); families with width pruning: {', '.join(supported)}")
    return table


def slice_hidden_(name: str, tensor: torch.Tensor, dim: int, kept: torch.Tensor, hidden_size: int) -> None:
    """Keep `kept` along `dim` of `tensor` in place (its `.data` is replaced, the object survives).

    A dim of m * hidden_size holds m width-sized blocks side by side (e.g. an MTP projection of
    [RMSNorm(h); RMSNorm(emb)]); each block keeps the same dims.
    """
    blocks, rest = divmod(tensor.shape[dim], hidden_size)
    if blocks == 0 or rest:
        raise ValueError(f"{name}: dim {dim} of {tuple(tensor.shape)} is not a multiple of the width {hidden_size}")
    index = torch.cat([kept + block * hidden_size for block in range(blocks)]).to(tensor.device)
    tensor.data = tensor.data.index_select(dim, index)


def sync_width_attributes(root: nn.Module, hidden_size: int) -> None:
    """Make module attributes agree with the sliced weights: Linear/Embedding sizes from their weights,
    and every WIDTH_ATTRIBUTES attribute set to `hidden_size`."""
    for module in root.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Embedding):
            module.embedding_dim = module.weight.shape[1]
        for attribute in WIDTH_ATTRIBUTES:
            if isinstance(getattr(module, attribute, None), int):
                setattr(module, attribute, hidden_size)


def shrink_hidden(model: PreTrainedModel, kept_dims: Sequence[int],
                  extra: Iterable[tuple[str, torch.Tensor, int]] = ()) -> None:
    """Keep hidden dims `kept_dims` (distinct, in the given order: RMSNorm does not care about order) in
    every width-sized dim of `model`, in place, and set config.hidden_size. `extra` adds (name, tensor,
    dim) entries outside the family's table (e.g. the harness's MTP module), sliced the same way. Keeping every
    dim in order is no cut, and leaves any family as it is."""
    hidden_size = model.config.hidden_size
    if list(kept_dims) == list(range(hidden_size)):
        return
    table = hidden_dims(model.config.model_type)
    kept = torch.tensor(check_kept(kept_dims, hidden_size, "compress.width", ordered=False))
    entries = [(name, param, table.get(LAYER_INDEX.sub("*", name))) for name, param in model.named_parameters()]
    for name, tensor, dim in [*entries, *extra]:
        if dim is not None:
            slice_hidden_(name, tensor, dim, kept, hidden_size)
    model.config.hidden_size = len(kept)
    sync_width_attributes(model, len(kept))
