"""Per-decoder-layer memory and throughput switches: `train.activation_checkpointing` and `train.compile`.

Both act on each decoder layer of a model and each block of its MTP module, in `configure_model` before FSDP
shards those same layers, and neither changes a module name or a state-dict key, so checkpoints move freely
between runs with the switches on and off:
- activation checkpointing uses transformers' own per-layer switch (`GradientCheckpointingLayer`): the layer's
  `forward` runs under non-reentrant `torch.utils.checkpoint`, keeping module hooks (FSDP2's all-gathers, the
  harness's router-logit hooks) outside the recomputed region; it is inert without gradients.
- compile is `nn.Module.compile()` on each layer (the compiled call lives beside the module, not around it).
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from slim.harness.config.schema import TrainConfig
from slim.harness.errors import UserError
from slim.harness.models.mtp import MTPModule
from slim.harness.models.view import view


def decoder_blocks(model: PreTrainedModel, mtp: MTPModule | None) -> list[nn.Module]:
    """The decoder layers of `model`, then its MTP module's blocks."""
    blocks = [layer.module for layer in view(model).layers]
    return blocks + ([] if mtp is None else [layer.block for layer in mtp.layers])


def checkpoint_activations(blocks: list[nn.Module]) -> None:
    """Recompute each block's activations in backward instead of keeping them (non-reentrant checkpoint)."""
    for block in blocks:
        if not isinstance(block, GradientCheckpointingLayer):
            raise UserError(f"train.activation_checkpointing: {type(block).__name__} layers do not support "
                            "activation checkpointing")
        block.gradient_checkpointing = True
        block._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)


def check_compiler() -> None:
    """Refuse `train.compile` before any work when inductor finds no C++ compiler (it builds CPU kernels and
    Triton's launchers with one); imported here, as loading inductor costs seconds."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as error:
        raise UserError("train.compile: torch.compile needs a C++ compiler ($CXX or g++) and none was found; "
                        "install one or set train.compile=false") from error


def prepare_layers(model: PreTrainedModel, mtp: MTPModule | None, cfg: TrainConfig, frozen: bool = False) -> None:
    """Apply the switches `cfg` turns on to `model` and `mtp` in place; a `frozen` model (a teacher, run without
    gradients) is only compiled. Call before sharding."""
    blocks = decoder_blocks(model, mtp)
    if cfg.activation_checkpointing and not frozen:
        checkpoint_activations(blocks)
    if cfg.compile:
        for block in blocks:
            block.compile()
