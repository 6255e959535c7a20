"""The cut half of `slim compress`: pure surgery on a loaded teacher. Every selection (layers, hidden dims, expert
plans) is made on the statistics first, then applied: experts (teacher layer indices), then depth, then width; a
teacher MTP module is compressed alongside. Nothing is read or written here but the model in memory."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel

from slim.harness.calibration.fingerprint import model_fingerprint
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.compression.depth import check_keeps_attention
from slim.harness.compression.depth_selectors import depth_selectors
from slim.harness.compression.lineage import LINEAGE_KEY, Lineage, compose
from slim.harness.compression.modeling_slim import expert_count
from slim.harness.compression.mtp import reduce_mtp_experts
from slim.harness.compression.recipe import student_top_k
from slim.harness.compression.selection import plan_experts, selector_scores
from slim.harness.compression.surgery import drop_layers, reduce_experts, shrink_hidden
from slim.harness.compression.width import sync_width_attributes
from slim.harness.compression.width_selectors import width_selectors
from slim.harness.config.schema import CompressConfig
from slim.harness.models.mtp import mtp_hidden_params
from slim.harness.models.params import count_parameters
from slim.harness.models.view import view


@dataclass
class Cut:
    """The student's compression `report` (what was cut and why, its lineage) and its MTP module, if any."""

    report: dict
    mtp: torch.nn.Module | None


def cut(recipe: CompressConfig, teacher_cfg: PretrainedConfig, model: PreTrainedModel, stats: CalibrationStats,
        source: Lineage, mtp: torch.nn.Module | None) -> Cut:
    """Cut `model` (the teacher, in place) into the student by `recipe` on `stats`; `source` is the teacher's own
    lineage (identity for an original teacher), `mtp` its MTP module or None."""
    before = count_parameters(model)
    layers, hidden = teacher_cfg.num_hidden_layers, teacher_cfg.hidden_size
    top_k = student_top_k(recipe, teacher_cfg)
    kept_layers = depth_selectors.get(recipe.depth.selector)(stats, layers, recipe.depth.num_drop)
    check_keeps_attention(teacher_cfg, kept_layers, recipe.depth)
    kept_dims = (width_selectors.get(recipe.width.selector)(stats, hidden, recipe.width.hidden_size)
                 if recipe.width.hidden_size else list(range(hidden)))
    plans, importance = plan_experts(recipe, stats, view(model), kept_layers, top_k)
    lineage = compose(source, kept_layers, {layer: plan.merge_map() for layer, plan in plans.items()})

    reduce_experts(model, plans, top_k)
    drop_layers(model, kept_layers)
    if recipe.width.hidden_size:
        shrink_hidden(model, kept_dims, extra=mtp_hidden_params(mtp) if mtp is not None else ())
    if mtp is not None:
        reduce_mtp_experts(mtp, recipe, expert_count(model.config), top_k)
        sync_width_attributes(mtp, len(kept_dims))
    report = {
        "teacher": recipe.teacher,
        "recipe": asdict(recipe),
        "params": {"teacher": asdict(before), "student": asdict(count_parameters(model))},
        "kept_layers": kept_layers,
        "kept_dims": kept_dims,
        "top_k": top_k,
        "experts": {
            str(layer): {"kept": plan.num_kept, "kept_ids": plan.kept_ids(), "dropped_ids": plan.dropped_ids(),
                         "merge_map": {str(k): v for k, v in plan.merge_map().items()},
                         "scores": importance[layer].tolist()}
            for layer, plan in sorted(plans.items())
        },
        "depth_scores": selector_scores(depth_selectors, stats, layers),
        "width_scores": selector_scores(width_selectors, stats, hidden),
        "stats_fingerprint": stats.fingerprint,
        "student_fingerprint": model_fingerprint(model),
        LINEAGE_KEY: asdict(lineage),
    }
    return Cut(report, mtp)
