"""Sharded loading for FSDP2 runs: no rank other than rank 0 ever holds a whole model.

Every rank builds the modules on the meta device from config.json alone, shards them (`fully_shard`) and
allocates only its own shards (`to_empty`). Rank 0 alone reads the full weights, one module at a time, and
`set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)` broadcasts them tensor by tensor,
each rank copying its slice into its shards (and into their dtype: a bf16 teacher is filled from fp32
files). So a rank other than 0 peaks at its shards plus one full tensor. Buffers that no state dict carries
(non-persistent: rotary `inv_freq`) are recomputed by the family's own init, as `from_pretrained` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from transformers import PreTrainedModel

from slim.harness.errors import UserError
from slim.harness.models.checkpoint_state import read_state_dict
from slim.harness.models.io import empty_model
from slim.harness.models.mtp import MTPModule, build_mtp, construct_mtp, mtp_depth
from slim.harness.models.mtp_io import has_mtp_weights, read_mtp_state
from slim.harness.models.quantized import check_not_quantized

T = TypeVar("T")
InitWeights = Callable[[nn.Module], None]  # a family's `_init_weights`, applied module by module
StateCheck = Callable[[dict[str, torch.Tensor]], None]  # raises a UserError to refuse weights read on rank 0
BROADCAST = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def mesh_device(mesh: DeviceMesh) -> torch.device:
    """The device this rank's shards live on: the CPU, or the current accelerator of the mesh's type."""
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, getattr(torch, mesh.device_type).current_device())


def on_rank0(read: Callable[[], T]) -> T | None:
    """`read()` on rank 0, None elsewhere; a UserError there is raised on every rank (a collective: all ranks
    call it), since the other ranks would otherwise wait forever in the broadcast that follows."""
    value, error = None, None
    if dist.get_rank() == 0:
        try:
            value = read()
        except UserError as failure:
            error = str(failure)
    errors = [error]
    dist.broadcast_object_list(errors, src=0)
    if errors[0] is not None:
        raise UserError(errors[0])
    return value


def materialize(module: nn.Module, device: torch.device, init_weights: InitWeights) -> None:
    """Allocate a sharded meta-device module's own shards on `device` (uninitialized) and recompute its
    non-persistent buffers with `init_weights` (the weights are then overwritten by the load)."""
    module.to_empty(device=device)
    for submodule in module.modules():
        if submodule._non_persistent_buffers_set:
            init_weights(submodule)


def fill_from_rank0(module: nn.Module, read_state: Callable[[], dict[str, torch.Tensor]], mesh: DeviceMesh,
                    init_weights: InitWeights) -> None:
    """Materialize sharded meta-device `module` and fill it with the full state dict that `read_state()` returns
    on rank 0 (called there only; the other ranks pass an empty dict). A collective: all ranks call it."""
    materialize(module, mesh_device(mesh), init_weights)
    state = on_rank0(read_state)
    set_model_state_dict(module, state or {}, options=BROADCAST)


def empty_with_mtp(directory: str | Path, with_mtp: bool) -> tuple[PreTrainedModel, MTPModule | None]:
    """`directory`'s model built on the meta device (slim.harness.models.io.empty_model) and, when `with_mtp` and its
    config has MTP depths, an MTP module for it on the meta device in the model's dtype. A quantized release is
    refused: the sharded read takes the stored tensors as they are."""
    check_not_quantized(json.loads((Path(directory) / "config.json").read_text()), f"checkpoint {directory}")
    model = empty_model(directory)
    if not (with_mtp and mtp_depth(model)):
        return model, None
    return model, construct_mtp(model, "meta").to(model.get_input_embeddings().weight.dtype)


def _mtp_state(model: PreTrainedModel, directory: str | Path, seed: int) -> dict[str, torch.Tensor]:
    """The MTP weights saved in `directory`, or when there are none a fresh init's, drawn from `seed` as one process
    without FSDP draws it (slim.harness.models.mtp.build_mtp)."""
    if has_mtp_weights(directory):
        return read_mtp_state(directory, mtp_depth(model))
    return build_mtp(model, seed).state_dict()


def fill_pretrained(model: PreTrainedModel, mtp: MTPModule | None, directory: str | Path, mesh: DeviceMesh,
                    seed: int, check: StateCheck | None = None) -> None:
    """Fill the sharded meta-device model of `directory` (slim.harness.models.io.empty_model) from rank 0's lazy read
    of its safetensors, which `check(state)` may refuse there, and its MTP module from its saved weights or,
    without any, a fresh init drawn from `seed`. A collective: all ranks call it."""
    def read_model() -> dict[str, torch.Tensor]:
        state = read_state_dict(model, directory)
        if check is not None:
            check(state)
        return state

    fill_from_rank0(model, read_model, mesh, model._init_weights)
    if mtp is not None:
        fill_from_rank0(mtp, lambda: _mtp_state(model, directory, seed), mesh, model._init_weights)
