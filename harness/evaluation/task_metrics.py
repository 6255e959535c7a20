"""Which metrics an lm-eval task reports, read from its YAML config (no data, no model), and the names the results
store gives them.

A task metric is `<task>/<metric>[,<filter>]`, from lm-eval's result keys `<metric>,<filter>`:
- lm-eval's default filter `none` (a task without a `filter_list`) is left out: `kjv_cloze/acc`, `mmlu/acc`;
- a task that applies exactly one filter may be named with or without it (`kjv_complete/exact_match,strip` or
  `kjv_complete/exact_match`): the store keeps the score under both names;
- a task with several filters needs one named: `gsm8k/exact_match,strict-match` or `,flexible-extract`.

Declared metrics: a task's `metric_list` (a `!function` metric is named by its function, as lm-eval does), else
lm-eval's defaults for its `output_type`; its filters: the `filter_list` names, else `none`. A group reports its
`aggregate_metric_list` (mmlu: acc over its subtasks); a tag reports nothing of its own, so one of its tasks must be
named. A Python-class task declares its metrics only once built (which loads its data), so any metric is accepted.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slim.harness.errors import UserError

if TYPE_CHECKING:
    from lm_eval.tasks._index import Entry

DEFAULT_FILTER = "none"
ANY_METRIC = None  # declared metrics of a task that only a build would reveal (Python-class tasks)


@dataclass(frozen=True)
class TaskMetric:
    """A parsed `<task>/<metric>[,<filter>]`; `filter` is None when the name leaves it out."""

    task: str
    metric: str
    filter: str | None = None

    @property
    def name(self) -> str:
        return f"{self.task}/{self.metric}" + (f",{self.filter}" if self.filter is not None else "")


def parse_task_metric(name: str) -> TaskMetric | None:
    """`mmlu/acc` -> TaskMetric("mmlu", "acc"); a name without `/` (val_perplexity) is not a task metric."""
    task, slash, rest = name.partition("/")
    if not slash:
        return None
    metric, comma, filter_name = rest.partition(",")
    return TaskMetric(task, metric, filter_name if comma else None)


def _metric_name(metric: Any) -> str:
    """A metric_list entry's name: `acc`, or a `!function` path `/path/utils.pass_at_k` -> `pass_at_k`."""
    text = str(metric)
    return text.rsplit(".", 1)[-1] if "/" in text else text


def _as_list(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def declared_metrics(entry: Entry) -> dict[str, tuple[str, ...]] | None:
    """metric -> the filters lm-eval reports it under, for a task or group entry of the index; ANY_METRIC for a
    Python-class task; {} for a tag or a group without aggregate metrics (they report none of their own)."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY
    from lm_eval.tasks._index import Kind

    config = entry.cfg or {}
    if entry.kind is Kind.PY_TASK:
        return ANY_METRIC
    if entry.kind is Kind.GROUP:
        return {_metric_name(item["metric"]): tuple(_as_list(item.get("filter_list")) or [DEFAULT_FILTER])
                for item in _as_list(config.get("aggregate_metric_list")) if isinstance(item, dict)}
    if entry.kind is not Kind.TASK:
        return {}
    filters = tuple(item["name"] for item in _as_list(config.get("filter_list"))) or (DEFAULT_FILTER,)
    if config.get("metric_list"):
        names = [_metric_name(item["metric"]) for item in config["metric_list"]]
    else:
        names = DEFAULT_METRIC_REGISTRY.get(config.get("output_type", ""), [])
    return {name: filters for name in names}


@functools.cache
def task_index(include_paths: tuple[str, ...] = ()) -> dict[str, Entry]:
    """lm-eval's task index (built-in tasks, the harness's local tasks and `include_paths`), built once per process
    from the YAML files alone (~7 s for lm-eval's ~12,000 tasks)."""
    from slim.harness.evaluation.lm_eval_runner import task_manager

    return dict(task_manager(include_paths).task_index)


def check_task_metric(name: str, index: dict[str, Entry]) -> None:
    """UserError unless `name` is a `<task>/<metric>[,<filter>]` that lm-eval reports (module docstring)."""
    parsed = parse_task_metric(name)
    assert parsed is not None, name
    entry = index.get(parsed.task)
    if entry is None:
        close = difflib.get_close_matches(parsed.task, list(index), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UserError(f"metric {name!r}: unknown lm-eval task {parsed.task!r}{hint}")
    declared = declared_metrics(entry)
    if declared is ANY_METRIC:
        return
    if not declared:
        members = ", ".join(_members(entry)[:3]) or "its subtasks"
        raise UserError(f"metric {name!r}: {parsed.task!r} reports no metric of its own (a tag, or a group without "
                        f"aggregate_metric_list); name one of its tasks ({members}, ...)")
    if parsed.metric not in declared:
        raise UserError(f"metric {name!r}: task {parsed.task!r} declares no metric {parsed.metric!r}; valid: "
                        f"{', '.join(declared)}")
    filters = declared[parsed.metric]
    named = [f"{parsed.task}/{parsed.metric}" + ("" if f == DEFAULT_FILTER else f",{f}") for f in filters]
    if parsed.filter is None and len(filters) > 1:
        raise UserError(f"metric {name!r}: task {parsed.task!r} reports {parsed.metric!r} under several filters; "
                        f"name one: {', '.join(named)}")
    if parsed.filter is not None and (parsed.filter == DEFAULT_FILTER or parsed.filter not in filters):
        raise UserError(f"metric {name!r}: task {parsed.task!r} has no filter {parsed.filter!r} for "
                        f"{parsed.metric!r}; valid: {', '.join(named)}")


def _members(entry: Entry) -> list[str]:
    """The tasks, groups and tags a group or tag runs (none for a task)."""
    from lm_eval.tasks._index import Kind

    if entry.kind is Kind.TAG:
        return sorted(entry.tags)
    if entry.kind is not Kind.GROUP:
        return []
    members = [member if isinstance(member, str) else member.get("task") or member.get("group")
               for member in _as_list((entry.cfg or {}).get("task"))]
    return [member for member in members if isinstance(member, str)]


def evaluated_tasks(names: Iterable[str], index: dict[str, Entry]) -> set[str]:
    """Every task and group whose results an lm-eval run of `names` reports: the names themselves, and the members
    of groups and tags, recursively."""
    found: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending.extend(_members(index[name]) if name in index else ())
    return found


def store_metrics(lm_eval_scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """{task: {"acc": v, "exact_match,strip": v}} (eval_summary.json's `lm_eval`) -> the store's metrics
    `task/acc`, `task/exact_match,strip`, and `task/exact_match` too when that metric has exactly one filter."""
    metrics = {}
    for task, scores in lm_eval_scores.items():
        by_metric: dict[str, list[str]] = {}
        for key in scores:
            by_metric.setdefault(key.partition(",")[0], []).append(key)
        for metric, keys in by_metric.items():
            metrics.update({f"{task}/{key}": float(scores[key]) for key in keys})
            if len(keys) == 1:
                metrics[f"{task}/{metric}"] = float(scores[keys[0]])
    return metrics


def include_paths(configured: Iterable[str]) -> tuple[str, ...]:
    """`eval.include_path` folders as resolved paths (the index cache key); a missing folder is a UserError."""
    paths = []
    for path in configured:
        if not Path(path).is_dir():
            raise UserError(f"eval.include_path: no such folder {path!r}")
        paths.append(str(Path(path).resolve()))
    return tuple(paths)
