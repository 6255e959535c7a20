"""Kind `run_eval`: a `run` cell followed by `slim eval` of its distilled student (lm-eval tasks, perplexity,
MTP acceptance, speed and memory against the teacher), for tables that report downstream numbers."""

from __future__ import annotations

import copy

from slim.harness.config.schema import SlimConfig
from slim.harness.evaluation.backends import SPEED_RATIOS, inference_backends
from slim.harness.evaluation.evaluate import evaluate, validate_eval_config
from slim.harness.evaluation.task_metrics import (
    check_task_metric,
    evaluated_tasks,
    include_paths,
    parse_task_metric,
    store_metrics,
    task_index,
)
from slim.harness.grid.cells._params import PARAM_METRICS
from slim.harness.grid.cells.run import DISTILL_METRICS, run_cell, validate_run
from slim.harness.grid.kinds import CellOutput, register_kind
from slim.harness.training.distill import DISTILL_CURVES

# Benchmark scores are stored as "<task>/<metric>[,<filter>]" (slim.harness.evaluation.task_metrics), any that lm-eval
# declares for a task. mtp_acc_k (the paper's acc_k, k = 1..eval.mtp.num_draft_tokens): share of positions where the
# first k MTP drafts are all accepted (eval_summary.json's mtp_acceptance.acc[k - 1]).
MTP_METRICS = (*(f"mtp_acc_{k}" for k in range(1, 9)), "mtp_tokens_per_step")
# Student vs teacher speed and memory under transformers, and `<backend>_<ratio>` under each backend of
# eval.efficiency.backends that could run (vllm_decode_speedup, ...).
EFFICIENCY_METRICS = ("prefill_speedup", "decode_speedup", "memory_ratio",
                      *(f"{name}_{ratio}" for name in inference_backends.keys() for ratio in SPEED_RATIOS))
EVAL_METRICS = ("eval_perplexity", "eval_expert_flops_saved", *MTP_METRICS, *EFFICIENCY_METRICS)


def check_task_metrics(names: list[str], configs: list[SlimConfig]) -> list[str]:
    """Each `<task>/<metric>[,<filter>]` must be one lm-eval declares for the task (its YAML config, with the cells'
    eval.include_path folders); returns those no cell's eval.tasks evaluates."""
    evaluated: set[str] = set()
    for paths in sorted({include_paths(cfg.eval.include_path) for cfg in configs}):
        index = task_index(paths)
        for name in names:
            check_task_metric(name, index)
        tasks = {tuple(cfg.eval.tasks) for cfg in configs if include_paths(cfg.eval.include_path) == paths}
        evaluated |= {task for names_run in tasks for task in evaluated_tasks(names_run, index)}
    return [name for name in names if parse_task_metric(name).task not in evaluated]


def eval_metrics(summary: dict) -> dict[str, float]:
    """Flatten an eval summary into the store's float metrics (absent parts are simply missing)."""
    metrics = store_metrics(summary.get("lm_eval", {}))
    if summary.get("perplexity") is not None:
        metrics["eval_perplexity"] = float(summary["perplexity"])
        metrics["eval_expert_flops_saved"] = float(summary["expert_flops_saved"]["overall"])
    acc = (summary.get("mtp_acceptance") or {}).get("acc")
    if acc:
        metrics.update({f"mtp_acc_{k}": value for k, value in enumerate(acc, start=1)})
        metrics["mtp_tokens_per_step"] = float(summary["mtp_acceptance"]["tokens_per_step"])
    efficiency = summary.get("efficiency") or {}
    metrics.update(efficiency.get("student_vs_teacher", {}))
    for name, measured in efficiency.get("backends", {}).items():
        metrics.update({f"{name}_{ratio}": value for ratio, value in measured.get("student_vs_teacher", {}).items()})
    return metrics


def validate_run_eval(cfg: SlimConfig) -> None:
    validate_run(cfg)
    validate_eval_config(cfg.eval)


@register_kind("run_eval", metrics=(*DISTILL_METRICS, *PARAM_METRICS, *EVAL_METRICS), validate=validate_run_eval,
               curves=DISTILL_CURVES, task_metrics=check_task_metrics, calibrates=True)
def run_eval_cell(cfg: SlimConfig) -> CellOutput:
    """Compress + distill, then evaluate the distilled student against the original teacher."""
    trained = run_cell(cfg)
    eval_cfg = copy.deepcopy(cfg)
    eval_cfg.eval.model, eval_cfg.eval.teacher = cfg.distill.output, cfg.compress.teacher
    summary = evaluate(eval_cfg)
    return CellOutput(metrics={**trained.metrics, **eval_metrics(summary)}, artifacts=trained.artifacts)
