"""Portable checkpoints: a model that its family's stock transformers class cannot build is saved as an architecture
of its own, with its modeling code beside the weights.

Two structures need it: MoE layers that keep different numbers of experts (a global budget; `num_experts_per_layer`
in the config, modeling code harness/compression/modeling_slim.py) and a model variant a plug-in registers
(slim.harness.models.variants, e.g. zero experts). Such a directory's config.json gets model type `<prefix>_<family>`
(`slim_qwen3_next`), architectures `[<Prefix><Stock>]` (`SlimQwen3NextForCausalLM`) and an `auto_map` naming those
classes in the copied modeling files (imports: torch and transformers only), so plain transformers and lm-eval load
it with `trust_remote_code=True` and refuse it without. The tensors keep the stock names and layout.

The harness itself reads such a directory as its stock family (`read_config`) and builds the stock class with the
structure installed (`model_class`), so in memory every model is a family model the uniform view understands.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from slim.harness.compression import modeling_slim
from slim.harness.models.variants import ModelVariant, model_variants

SLIM_FILE = Path(modeling_slim.__file__)


def _variants(config: PretrainedConfig) -> list[ModelVariant]:
    """The registered model variants `config` records."""
    return [variant for _, variant in model_variants.items() if getattr(config, variant.config_field, None) is not None]


def _architecture(config: PretrainedConfig) -> tuple[str, list[Path]] | None:
    """(class-name prefix, modeling files, the one defining the classes last) of the portable architecture `config`
    needs; None when the stock class builds it."""
    variants = _variants(config)
    if len(variants) > 1:
        raise ValueError(f"one checkpoint holds one model variant, this model has {[v.config_field for v in variants]}")
    if variants:
        return variants[0].prefix, [SLIM_FILE, variants[0].modeling_file]
    if getattr(config, modeling_slim.EXPERTS_PER_LAYER, None) is not None:
        return modeling_slim.PREFIX, [SLIM_FILE]
    return None


def _prefixes() -> list[str]:
    return [modeling_slim.PREFIX, *(variant.prefix for _, variant in model_variants.items())]


def family_of(model_type: str) -> str:
    """The family of a config.json model type: `slim_qwen3_next` -> `qwen3_next`; a stock one is its own."""
    for prefix in _prefixes():
        if model_type.startswith(f"{prefix.lower()}_"):
            return model_type[len(prefix) + 1:]
    return model_type


def write_portable(config: PretrainedConfig, directory: Path) -> None:
    """Make the model saved in `directory` (config.json as transformers wrote it from `config`) portable when its
    structure needs it: rewrite config.json's model type, architectures and auto_map, copy the modeling files."""
    architecture = _architecture(config)
    if architecture is None:
        return
    prefix, files = architecture
    stock_model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__
    module = files[-1].stem
    config_file = directory / "config.json"
    data = json.loads(config_file.read_text())
    data.update(model_type=f"{prefix.lower()}_{config.model_type}", architectures=[prefix + stock_model],
                auto_map={"AutoConfig": f"{module}.{prefix}{type(config).__name__}",
                          "AutoModelForCausalLM": f"{module}.{prefix}{stock_model}"})
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for file in files:
        shutil.copyfile(file, directory / file.name)


def read_config(path: str | Path) -> PretrainedConfig:
    """config.json of model directory `path` as its family's stock config (a portable one's model type and
    architecture restored, auto_map dropped)."""
    config_file = Path(path) / "config.json"
    data = json.loads(config_file.read_text())
    family = family_of(str(data.get("model_type")))
    if family == data.get("model_type"):
        return AutoConfig.from_pretrained(path)
    config_class = CONFIG_MAPPING[family]
    data.pop("auto_map", None)
    data.update(model_type=family, architectures=[MODEL_FOR_CAUSAL_LM_MAPPING[config_class].__name__])
    return config_class.from_dict(data)


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The family's causal-LM class for `config`, or a same-named subclass of it that installs the structure the
    config records (per-layer expert counts, then model variants) right after construction, before transformers
    loads and converts the weights."""
    stock = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    installs = [variant.install for variant in _variants(config)]
    if getattr(config, modeling_slim.EXPERTS_PER_LAYER, None) is not None:
        installs.insert(0, modeling_slim.install_expert_counts)
    return modeling_slim.structured_class(stock, installs, module=__name__) if installs else stock
