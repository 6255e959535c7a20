"""Portable modeling code for a student whose MoE layers keep different numbers of experts (a global budget).

This file imports only torch and transformers: `slim.harness.models.portable` copies it into such a student's directory
and names its classes in config.json's `auto_map`, so `AutoModelForCausalLM.from_pretrained(directory,
trust_remote_code=True)` and `lm_eval --model hf` load the student without the harness, while loading without
`trust_remote_code` fails on the unknown model type instead of dropping or mis-sizing weights.

`Slim<Stock>` is transformers' own class `<Stock>` (`SlimQwen3NextForCausalLM` / `SlimQwen3NextConfig`, and the same
for every family whose sparse MoE blocks hold a router `gate` and packed `experts`) with one difference: after the
stock constructor, the MoE block of each layer whose entry in `config.num_experts_per_layer` (one per decoder layer,
0 for a dense layer) differs from `config.num_experts` is rebuilt by its own class from a copy of the config holding
that count. The classes are made on first access (the module's `__getattr__`); their model type is
`slim_<family>`, and the family's weight conversions are registered for it, so the checkpoint keeps the stock tensor
names and layout. A plug-in's modeling file derives its own architecture from the same pieces (`portable_class`
with its `install` step), and the harness builds its in-memory models with `structured_class`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

PREFIX = "Slim"
EXPERTS_PER_LAYER = "num_experts_per_layer"

Install = Callable[[PreTrainedModel], None]


def moe_blocks(model: PreTrainedModel) -> list[tuple[int, nn.Module]]:
    """(decoder layer index, sparse MoE block) of every layer whose MLP has a router (`gate`, gpt-oss's `router`) and
    packed `experts`."""
    return [(index, layer.mlp) for index, layer in enumerate(model.model.layers)
            if (hasattr(layer.mlp, "gate") or hasattr(layer.mlp, "router")) and hasattr(layer.mlp, "experts")]


# The names transformers configs give the routed-expert count; each config answers to some of them (its attribute_map
# maps the others: DeepSeek-V3's num_local_experts is n_routed_experts, Qwen3-MoE's num_experts is num_local_experts).
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def set_expert_count(config: PretrainedConfig, count: int) -> None:
    """Set the routed-expert count of `config` under every name it answers to, so its family's classes read it."""
    for key in EXPERT_COUNT_KEYS:
        if hasattr(config, key):
            setattr(config, key, count)


def expert_count(config: PretrainedConfig) -> int:
    """The routed-expert count of `config`, under the first name it answers to."""
    return next(getattr(config, key) for key in EXPERT_COUNT_KEYS if hasattr(config, key))


def install_expert_counts(model: PreTrainedModel) -> None:
    """Rebuild every MoE block whose layer keeps another number of experts than `config.num_experts`."""
    counts = getattr(model.config, EXPERTS_PER_LAYER, None)
    if counts is None:
        return
    if len(counts) != len(model.model.layers):
        raise ValueError(f"config.json {EXPERTS_PER_LAYER} has {len(counts)} entries for "
                         f"{len(model.model.layers)} layers")
    for index, block in moe_blocks(model):
        if counts[index] and counts[index] != block.experts.num_experts:
            layer_config = copy.copy(model.config)
            set_expert_count(layer_config, counts[index])
            model.model.layers[index].mlp = type(block)(layer_config)


def structured_class(stock: type[PreTrainedModel], installs: Sequence[Install], name: str | None = None,
                     module: str | None = None, config_class: type[PretrainedConfig] | None = None
                     ) -> type[PreTrainedModel]:
    """A subclass of `stock` (named `name`, default the stock name) whose constructor runs `installs` in order on
    the freshly built stock model, before transformers loads any weight into it."""

    def __init__(self: PreTrainedModel, config: PretrainedConfig, *args: Any, **kwargs: Any) -> None:
        stock.__init__(self, config, *args, **kwargs)
        for install in installs:
            install(self)

    name = name or stock.__name__
    attributes: dict[str, Any] = {"__init__": __init__, "__module__": module or stock.__module__,
                                  "__qualname__": name}
    if config_class is not None:
        attributes["config_class"] = config_class
    return type(name, (stock,), attributes)


def _stock_pair(stock: object) -> tuple[type[PretrainedConfig], type[PreTrainedModel]] | None:
    """(config class, causal-LM class) of a transformers family, from either of the two; None for anything else."""
    if not isinstance(stock, type):
        return None
    if issubclass(stock, PretrainedConfig) and stock in MODEL_FOR_CAUSAL_LM_MAPPING:
        return stock, MODEL_FOR_CAUSAL_LM_MAPPING[stock]
    if issubclass(stock, PreTrainedModel) and MODEL_FOR_CAUSAL_LM_MAPPING.get(stock.config_class) is stock:
        return stock.config_class, stock
    return None


def portable_class(namespace: dict[str, Any], prefix: str, name: str, install: Install | None = None) -> type:
    """`<prefix><Stock>` for transformers' config or causal-LM class `<Stock>`: the config class with model type
    `<prefix lower>_<family>` and the causal-LM class that installs the per-layer expert counts, then `install`. Both
    classes are made together on first access and kept in `namespace`, the globals of the module that names them."""
    pair = _stock_pair(getattr(transformers, name.removeprefix(prefix), None)) if name.startswith(prefix) else None
    if pair is None:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    stock_config, stock_model = pair
    module = namespace["__name__"]
    model_type = f"{prefix.lower()}_{stock_config.model_type}"
    config_name = prefix + stock_config.__name__
    config_class = type(config_name, (stock_config,),
                        {"model_type": model_type, "__module__": module, "__qualname__": config_name})
    installs = [install_expert_counts, *([install] if install is not None else [])]
    model_class = structured_class(stock_model, installs, prefix + stock_model.__name__, module, config_class)
    conversions = get_checkpoint_conversion_mapping(stock_config.model_type)
    if conversions is not None:  # per-expert tensors on disk, packed experts in the modules, as for the stock family
        register_checkpoint_conversion_mapping(model_type, conversions, overwrite=True)
    namespace[config_class.__name__], namespace[model_class.__name__] = config_class, model_class
    return namespace[name]


def __getattr__(name: str) -> type:
    return portable_class(globals(), PREFIX, name)
