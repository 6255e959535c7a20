"""FSDP2 (`fully_shard`) for ModelParallelStrategy runs: one FSDP unit per decoder layer, the backbone as root.

The training steps run the backbone (`model.model`) and apply the LM head weight themselves (inside the
chunked KD kernel), so the causal LM's own forward never runs and FSDP hooks on it would never fire. The
root unit is therefore the backbone, and the LM head's parameters join the root's parameter group: they
are all-gathered when the backbone's forward starts and stay gathered (FSDP keeps the root unsharded after
forward) until backward has reduce-scattered their gradients. A full causal-LM forward works as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from slim.harness.models.mtp import MTPModule
from slim.harness.models.view import view

DATA_PARALLEL = "data_parallel"  # ModelParallelStrategy's name for the mesh dimension FSDP shards over
NO_POLICY = MixedPrecisionPolicy()  # compute in the parameters' own dtype

Modules = TypeVar("Modules", bound=Sequence[nn.Module | None])


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D data-parallel sub-mesh of Lightning's (data_parallel, tensor_parallel) mesh."""
    return mesh[DATA_PARALLEL] if mesh.mesh_dim_names and DATA_PARALLEL in mesh.mesh_dim_names else mesh


@contextmanager
def _adopted(parent: nn.Module, name: str, child: nn.Module) -> Iterator[None]:
    """`child` registered under `parent` for the duration, so `fully_shard(parent)` puts its parameters in
    parent's group; FSDP keeps a reference to `child` itself, so the module tree is restored afterwards."""
    parent.add_module(name, child)
    try:
        yield
    finally:
        del parent._modules[name]


def shard_causal_lm(model: PreTrainedModel, mesh: DeviceMesh, policy: MixedPrecisionPolicy = NO_POLICY) -> None:
    """Shard each decoder layer, then the backbone with the LM head as the root unit (in place); every unit
    computes under `policy` (slim.harness.training.precision)."""
    mesh = data_parallel_mesh(mesh)
    for layer in view(model).layers:
        fully_shard(layer.module, mesh=mesh, mp_policy=policy)
    with _adopted(model.model, "lm_head", model.get_output_embeddings()):
        fully_shard(model.model, mesh=mesh, mp_policy=policy)


def shard_mtp(mtp: MTPModule, mesh: DeviceMesh, policy: MixedPrecisionPolicy = NO_POLICY) -> None:
    """Shard each depth's decoder block, then the module as its own root (it runs after the backbone's
    forward, on the backbone's gathered embedding). The depths' norms and projections stay in the root
    unit: MTPModule.forward applies a depth's output norm after that depth's forward has returned."""
    mesh = data_parallel_mesh(mesh)
    for layer in mtp.layers:
        fully_shard(layer.block, mesh=mesh, mp_policy=policy)
    fully_shard(mtp, mesh=mesh, mp_policy=policy)


def shard_with_mtp(model: PreTrainedModel, mtp: MTPModule | None, mesh: DeviceMesh,
                   policy: MixedPrecisionPolicy = NO_POLICY) -> None:
    """`shard_causal_lm` on the model and `shard_mtp` on its MTP module when it has one."""
    shard_causal_lm(model, mesh, policy)
    if mtp is not None:
        shard_mtp(mtp, mesh, policy)


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(param, DTensor) for param in module.parameters())


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every shard gathered to CPU on rank 0 (an empty dict elsewhere); a collective: all ranks must call it."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather_unsharded(modules: Modules, load_fresh: Callable[[], Modules]) -> Modules | None:
    """Plain, unsharded versions of `modules` (None entries stay None) for writing HF directories.

    Unsharded `modules` are returned as they are. Sharded ones are gathered by every rank (collectives);
    rank 0 gets `load_fresh()` (the same architectures, built or loaded on CPU) holding the gathered
    weights, the other ranks get None.
    """
    if not any(module is not None and is_sharded(module) for module in modules):
        return modules
    states = [None if module is None else full_state_dict(module) for module in modules]
    if dist.get_rank() != 0:
        return None
    fresh = load_fresh()
    for module, state in zip(fresh, states, strict=True):
        if module is not None:
            module.load_state_dict(state)
    return fresh
