"""`slim compress`: teacher + calibration stats + recipe -> student Hugging Face directory.

All selections (layers, hidden dims, expert plans) are made on the teacher's statistics first, then
applied as surgery: experts (teacher layer indices), then depth, then width; a teacher MTP module is
compressed alongside (slim.harness.compression.mtp). The student directory
gets `compression_report.json` with parameter counts, kept layers/dims, per-layer expert maps,
the methods used and the stats fingerprint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from slim.harness.calibration.fingerprint import model_fingerprint
from slim.harness.calibration.io import check_fingerprint, check_stats_data, load_stats
from slim.harness.calibration.run import check_vocab_size, run_calibration
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.compression.budget import allocate_experts, uniform_budget
from slim.harness.compression.depth import check_keeps_attention
from slim.harness.compression.depth_selectors import depth_selectors
from slim.harness.compression.lineage import LINEAGE_KEY, REPORT_NAME, Lineage, compose, identity_lineage, read_lineage
from slim.harness.compression.method_support import SCORES_HOOK
from slim.harness.compression.mtp import reduce_mtp_experts
from slim.harness.compression.plan import ExpertPlan
from slim.harness.compression.recipe import configured, student_top_k, validate_recipe
from slim.harness.compression.surgery import drop_layers, reduce_experts, shrink_hidden
from slim.harness.compression.width import sync_width_attributes
from slim.harness.compression.width_selectors import width_selectors
from slim.harness.config.schema import CompressConfig, SlimConfig
from slim.harness.distributed import init_distributed, on_rank_zero, rank
from slim.harness.errors import UserError
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.io import load_pretrained, read_model_config, save_pretrained
from slim.harness.models.mtp import mtp_hidden_params
from slim.harness.models.mtp_io import find_mtp, save_mtp
from slim.harness.models.params import count_parameters
from slim.harness.models.view import ModelView, view
from slim.harness.outputs import check_output_dir, weights_bytes
from slim.harness.registry import Registry

logger = logging.getLogger(__name__)


def exempt_layers(moe_layers: list[int], recipe: CompressConfig) -> set[int]:
    """The first/last N kept MoE layers, which keep all their experts."""
    first = moe_layers[: recipe.experts.exempt_first]
    last = moe_layers[len(moe_layers) - recipe.experts.exempt_last:] if recipe.experts.exempt_last else []
    return set(first) | set(last)


def expert_counts(recipe: CompressConfig, importance: dict[int, torch.Tensor], exempt: set[int],
                  top_k: int) -> dict[int, int]:
    """Experts kept per MoE layer under the uniform or global budget."""
    sizes = {layer: scores.numel() for layer, scores in importance.items()}
    target = recipe.experts.num_experts
    if recipe.experts.budget == "uniform":
        return uniform_budget(sizes, target, exempt)
    free = [layer for layer in sizes if layer not in exempt]
    total = target * len(free) + sum(sizes[layer] for layer in exempt)
    return allocate_experts(importance, total, max(recipe.experts.min_per_layer, top_k), exempt)


def plan_experts(recipe: CompressConfig, stats: CalibrationStats, model_view: ModelView, kept_layers: list[int],
                 top_k: int) -> tuple[dict[int, ExpertPlan], dict[int, torch.Tensor]]:
    """Teacher layer index -> expert plan, and -> the criterion's scores [E] it was made from, for every kept MoE
    layer (both empty when experts are kept)."""
    if not recipe.experts.num_experts:
        return {}, {}
    moe = {layer.index: layer.moe for layer in model_view.moe_layers() if layer.index in kept_layers}
    criterion, similarity, reducer = (configured(recipe, kind) for kind in ("criterion", "similarity", "reducer"))
    importance = {index: criterion(stats.moe.get(index), block) for index, block in moe.items()}
    counts = expert_counts(recipe, importance, exempt_layers(sorted(moe), recipe), top_k)
    plans = {
        index: reducer(importance[index], similarity(stats.moe.get(index), block), counts[index])
        for index, block in moe.items()
    }
    return plans, importance


def selector_scores(registry: Registry, stats: CalibrationStats, size: int) -> dict[str, list[float]]:
    """Selector name -> the scores it ranks by ([size]: one per layer or hidden dim), for every selector of
    `registry` with a scores hook whose statistics `stats` hold, whichever one the recipe picked."""
    found = {}
    for name, selector in registry.items():
        scores = getattr(selector, SCORES_HOOK, None)
        if scores is not None:
            try:
                found[name] = scores(stats, size).tolist()
            except UserError:
                continue
    return found


def _stored_stats(cfg: SlimConfig, teacher_cfg: PretrainedConfig) -> CalibrationStats | None:
    """compress.stats read and checked against this config's calibration data (before the teacher is loaded),
    or None when they are computed on the fly (then the data tokenizer is checked against the teacher's vocabulary)."""
    if not cfg.compress.stats:
        check_vocab_size(cfg.data, teacher_cfg, cfg.compress.teacher)
        return None
    stats = load_stats(cfg.compress.stats)
    check_stats_data(stats, cfg, cfg.compress.stats)
    return stats


def _report(cfg: SlimConfig, teacher_cfg: PretrainedConfig, before, after, kept_layers, kept_dims, plans, importance,
            stats, top_k) -> dict:
    """What was cut and why: counts, kept layers/dims, per-layer expert maps with the criterion's scores, and the
    depth / width selectors' scores on these statistics (what slim.reports.compression_figures plots)."""
    return {
        "teacher": cfg.compress.teacher,
        "recipe": asdict(cfg.compress),
        "params": {"teacher": asdict(before), "student": asdict(after)},
        "kept_layers": kept_layers,
        "kept_dims": kept_dims,
        "top_k": top_k,
        "experts": {
            str(layer): {"kept": plan.num_kept, "kept_ids": plan.kept_ids(), "dropped_ids": plan.dropped_ids(),
                         "merge_map": {str(k): v for k, v in plan.merge_map().items()},
                         "scores": importance[layer].tolist()}
            for layer, plan in sorted(plans.items())
        },
        "depth_scores": selector_scores(depth_selectors, stats, teacher_cfg.num_hidden_layers),
        "width_scores": selector_scores(width_selectors, stats, teacher_cfg.hidden_size),
        "stats_fingerprint": stats.fingerprint,
    }


def source_lineage(recipe: CompressConfig, model_view: ModelView) -> Lineage:
    """The compressed model's own lineage (a student cut again), or the identity for an original teacher."""
    stored = read_lineage(recipe.teacher, REPORT_NAME)
    if stored is not None:
        return stored
    experts = [layer.moe.router.shape[0] if layer.moe is not None else 0 for layer in model_view.layers]
    return identity_lineage(recipe.teacher, len(model_view.layers), experts)


def compress(cfg: SlimConfig) -> dict:
    """Compress `cfg.compress.teacher` by the recipe and write the student to `cfg.compress.output`; returns the
    compression report. Under torchrun or srun every rank calibrates its share of the batches (when compress.stats
    is empty), then rank 0 alone cuts and writes the student while the others wait for its report."""
    recipe = cfg.compress
    teacher_cfg = read_model_config(recipe.teacher, "compress.teacher")
    validate_recipe(recipe, teacher_cfg)
    check_output_dir(recipe.output, "compress.output", weights_bytes(recipe.teacher))
    stored = _stored_stats(cfg, teacher_cfg)
    init_distributed(cuda=torch.device(cfg.calibration.device).type == "cuda")
    teacher = load_pretrained(recipe.teacher) if stored is None or rank() == 0 else None
    if teacher is not None:
        apply_experts_policy(cfg.model_runtime.experts_implementation, teacher[0], device=cfg.calibration.device)
    stats = run_calibration(teacher[0], cfg.data, cfg.calibration, recipe.teacher) if stored is None else stored
    if rank() != 0:
        teacher = None  # only rank 0 cuts: the others drop their copy before waiting
    return on_rank_zero(lambda: _cut(cfg, teacher_cfg, *teacher, stats, from_file=stored is not None))


def _cut(cfg: SlimConfig, teacher_cfg: PretrainedConfig, model: PreTrainedModel,
         tokenizer: PreTrainedTokenizerBase | None, stats: CalibrationStats, from_file: bool) -> dict:
    """Select on `stats`, cut the loaded teacher `model` into the student and write it with its report; stats
    read from compress.stats (`from_file`) are first checked against the teacher's fingerprint."""
    recipe = cfg.compress
    if from_file:
        check_fingerprint(stats, model, recipe.stats)
    # A teacher pretrained without an MTP module has none to compress; the distiller then builds a fresh one.
    mtp = find_mtp(model, recipe.teacher)
    before = count_parameters(model)
    model_view = view(model)
    layers, hidden = teacher_cfg.num_hidden_layers, teacher_cfg.hidden_size
    top_k = student_top_k(recipe, teacher_cfg)
    kept_layers = depth_selectors.get(recipe.depth.selector)(stats, layers, recipe.depth.num_drop)
    check_keeps_attention(teacher_cfg, kept_layers, recipe.depth)
    kept_dims = (width_selectors.get(recipe.width.selector)(stats, hidden, recipe.width.hidden_size)
                 if recipe.width.hidden_size else list(range(hidden)))
    plans, importance = plan_experts(recipe, stats, model_view, kept_layers, top_k)
    lineage = compose(source_lineage(recipe, model_view), kept_layers,
                      {layer: plan.merge_map() for layer, plan in plans.items()})

    reduce_experts(model, plans, top_k)
    drop_layers(model, kept_layers)
    if recipe.width.hidden_size:
        shrink_hidden(model, kept_dims, extra=mtp_hidden_params(mtp) if mtp is not None else ())
    if mtp is not None:
        reduce_mtp_experts(mtp, recipe, model.config.num_experts, top_k)
        sync_width_attributes(mtp, len(kept_dims))
    report = _report(cfg, teacher_cfg, before, count_parameters(model), kept_layers, kept_dims, plans, importance,
                     stats, top_k)
    report["student_fingerprint"] = model_fingerprint(model)
    report[LINEAGE_KEY] = asdict(lineage)

    def write_report(directory: Path) -> None:
        (directory / REPORT_NAME).write_text(json.dumps(report, indent=1))
        if mtp is not None:
            save_mtp(mtp, directory)

    save_pretrained(model, recipe.output, tokenizer=tokenizer, extras=write_report)
    return report


def write_figures(report: dict, directory: str | Path) -> list[Path]:
    """The compression figures (slim.reports.compression_figures) beside the report in student `directory`, for
    `slim compress` and `slim report`; a plotting failure costs one warning line, never the student. (Not part of
    `compress` itself: a grid or test that compresses many times pays for figures only when it asks for them.)"""
    try:
        from slim.reports.compression_figures import write_compression_figures

        return write_compression_figures(report, directory)
    except Exception as error:  # noqa: BLE001 - any plotting failure is a warning, the student is already written
        logger.warning("compression figures not written in %s: %s: %s", directory, type(error).__name__, error)
        return []
