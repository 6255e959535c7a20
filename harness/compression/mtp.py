"""Compress the MTP module together with its backbone (SlimQwen applies width pruning to MTP too).

The MTP block's experts have no calibration statistics (calibration runs the backbone only), so
they are reduced by the recipe's reducer with the statistics-free `weight_norm` criterion and
`router_weights` similarity, to the student's expert count and top-k. Its hidden dims are sliced
by `shrink_hidden(..., extra=mtp_hidden_params(mtp))` alongside the backbone's.
"""

from __future__ import annotations

from slim.harness.compression.expert_criteria import criteria
from slim.harness.compression.expert_similarities import similarities
from slim.harness.compression.experts import apply_to_moe
from slim.harness.compression.recipe import configured
from slim.harness.config.schema import CompressConfig
from slim.harness.models.mtp import MTPModule
from slim.harness.models.view import moe_view


def reduce_mtp_experts(mtp: MTPModule, recipe: CompressConfig, num_experts: int, top_k: int) -> None:
    """Give every MTP depth's MoE block `num_experts` experts (stats-free plan) and the student's top-k."""
    reducer = configured(recipe, "reducer")
    for layer in mtp.layers:
        moe = moe_view(layer.block.mlp)
        if num_experts < moe.num_experts:
            importance = criteria.get("weight_norm")(None, moe)
            similarity = similarities.get("router_weights")(None, moe)
            plan = reducer(importance, similarity, num_experts)
            apply_to_moe(moe, plan)
        moe.router_module.top_k = top_k
    mtp.config.num_experts, mtp.config.num_experts_per_tok = num_experts, top_k
