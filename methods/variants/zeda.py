"""ZEDA: Z zero-output experts in every MoE router (`num_zero_experts`), architecture `Zeda<Stock>`."""

from __future__ import annotations

from pathlib import Path

from slim.harness.models.variants import ModelVariant, model_variants
from slim.methods.zeda import modeling_zeda

model_variants.register("zeda")(ModelVariant(__doc__, modeling_zeda.CONFIG_FIELD, modeling_zeda.PREFIX,
                                             Path(modeling_zeda.__file__), modeling_zeda.install_from_config))
