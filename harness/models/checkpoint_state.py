"""A checkpoint's weights in a model's own state-dict names and layouts, read one tensor at a time.

Checkpoints hold the layout `save_pretrained` writes (one tensor per expert), the modules transformers'
loading layout (experts packed into [E, 2I, d] and [E, d, I]); transformers maps one onto the other with
the model's registered weight conversions. `read_state_dict` applies those same conversions to tensors
read lazily with safetensors, without building the model: sharded loading (slim.harness.training.sharded_load)
fills a model built on the meta device from what one rank reads here.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    WeightConverter,
    WeightRenaming,
    WeightTransform,
    dot_natural_key,
    rename_source_key,
)

from slim.harness.errors import UserError
from slim.harness.models.weight_files import weight_files


def _transforms(model: PreTrainedModel, expected: dict[str, torch.Tensor], files: dict[str, Path],
                handles: ExitStack) -> dict[str, WeightTransform]:
    """State-dict name -> the transform that produces it, holding lazy reads of its checkpoint tensors; names
    the model lacks (e.g. released `mtp.*` tensors) are skipped, as transformers skips them."""
    conversions = get_model_conversion_mapping(model)
    renamings = [entry for entry in conversions if isinstance(entry, WeightRenaming)]
    converters = [entry for entry in conversions if isinstance(entry, WeightConverter)]
    by_pattern = {pattern: converter for converter in converters for pattern in converter.source_patterns}
    opened = {file: handles.enter_context(safe_open(file, framework="pt")) for file in set(files.values())}
    transforms: dict[str, WeightTransform] = {}
    for name in sorted(files, key=dot_natural_key):  # per-expert tensors in expert order
        target, pattern = rename_source_key(name, renamings, converters, model.base_model_prefix, expected)
        if target not in expected:
            continue
        transform = transforms.setdefault(
            target, WeightRenaming(name, target) if pattern is None else copy.deepcopy(by_pattern[pattern]))
        transform.add_tensor(target, name, pattern or name, partial(opened[files[name]].get_tensor, name))
    return transforms


def read_state_dict(model: PreTrainedModel, directory: str | Path) -> dict[str, torch.Tensor]:
    """Every entry of `model.state_dict()` (a meta-device model will do: only names and shapes are used) read
    from checkpoint `directory` in the checkpoint's dtype; one-line UserError for a missing or misshapen one."""
    directory = Path(directory)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    with ExitStack() as handles:
        for target, transform in _transforms(model, expected, weight_files(directory), handles).items():
            for name, tensor in transform.convert(target, model=model, config=model.config).items():
                state[name] = tensor[0] if isinstance(tensor, list) else tensor
    for tied, source in model.all_tied_weights_keys.items():  # e.g. lm_head.weight under tie_word_embeddings
        if source in state:
            state.setdefault(tied, state[source])
    if missing := sorted(expected.keys() - state.keys()):
        raise UserError(f"checkpoint {directory}: missing_keys {missing} (config.json expects them)")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UserError(f"checkpoint {directory}: {name} has shape {tuple(tensor.shape)}, config.json expects "
                            f"{tuple(expected[name].shape)}")
    return state
