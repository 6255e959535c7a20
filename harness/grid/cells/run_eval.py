"""Kind `run_eval`: a `run` cell followed by `slim eval` of its distilled student (lm-eval tasks, perplexity,
MTP acceptance, speed and memory against the teacher), for tables that report downstream numbers."""

from __future__ import annotations

import copy

from harness.config.schema import SlimConfig
from harness.evaluation.evaluate import evaluate, validate_eval_config
from harness.grid.cells._params import PARAM_METRICS
from harness.grid.cells.run import DISTILL_CURVES, DISTILL_METRICS, run_cell, validate_run
from harness.grid.kinds import CellOutput, register_kind

# Headline metric per local task (kjv_next_verse is scored by mutual information: plain acc ranks verses by
# their own likelihood); other lm-eval tasks are stored too, as "<task>/<metric>".
TASK_METRICS = ("kjv_cloze/acc", "kjv_next_verse/acc_mutual_info", "kjv_complete/exact_match")
MTP_METRICS = ("mtp_acc_0", "mtp_acc_1", "mtp_acc_2", "mtp_tokens_per_step")
EFFICIENCY_METRICS = ("prefill_speedup", "decode_speedup", "memory_ratio")
EVAL_METRICS = (*TASK_METRICS, "eval_perplexity", "eval_expert_flops_saved", *MTP_METRICS, *EFFICIENCY_METRICS)


def eval_metrics(summary: dict) -> dict[str, float]:
    """Flatten an eval summary into the store's float metrics (absent parts are simply missing)."""
    metrics = {f"{task}/{name}": value for task, scores in summary.get("lm_eval", {}).items()
               for name, value in scores.items()}
    if summary.get("perplexity") is not None:
        metrics["eval_perplexity"] = float(summary["perplexity"])
        metrics["eval_expert_flops_saved"] = float(summary["expert_flops_saved"]["overall"])
    acc = (summary.get("mtp_acceptance") or {}).get("acc")
    if acc:
        metrics.update({f"mtp_acc_{j}": value for j, value in enumerate(acc)})
        metrics["mtp_tokens_per_step"] = float(summary["mtp_acceptance"]["tokens_per_step"])
    metrics.update((summary.get("efficiency") or {}).get("student_vs_teacher", {}))
    return metrics


def validate_run_eval(cfg: SlimConfig) -> None:
    validate_run(cfg)
    validate_eval_config(cfg.eval)


@register_kind("run_eval", metrics=(*DISTILL_METRICS, *PARAM_METRICS, *EVAL_METRICS), validate=validate_run_eval,
               curves=DISTILL_CURVES)
def run_eval_cell(cfg: SlimConfig) -> CellOutput:
    """Compress + distill, then evaluate the distilled student against the original teacher."""
    trained = run_cell(cfg)
    eval_cfg = copy.deepcopy(cfg)
    eval_cfg.eval.model, eval_cfg.eval.teacher = cfg.distill.output, cfg.compress.teacher
    summary = evaluate(eval_cfg)
    return CellOutput(metrics={**trained.metrics, **eval_metrics(summary)}, artifacts=trained.artifacts)
