"""Model variants: structure a plug-in adds to a stock transformers MoE (e.g. zero-output experts in every
router), recorded in config.json, rebuilt by the harness when it loads the model and saved as a portable
architecture of its own (slim.harness.models.portable) that plain transformers loads with `trust_remote_code=True`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel

from slim.harness.registry import Registry


@dataclass(frozen=True)
class ModelVariant:
    """A model has the variant iff its config has `config_field` (not None). `install` gives a freshly built stock
    model of any family that structure, from its config, before weights are loaded. `modeling_file` imports only
    torch and transformers (and `.modeling_slim`, copied beside it) and defines `<prefix><Stock>` for each stock
    config and causal-LM class, model type `<prefix lower>_<family>`."""

    doc: str
    config_field: str
    prefix: str
    modeling_file: Path
    install: Callable[[PreTrainedModel], None]

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.doc)  # what `slim methods` lists


model_variants: Registry[ModelVariant] = Registry.of_group("slim.model_variants")
