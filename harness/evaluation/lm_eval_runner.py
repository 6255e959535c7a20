"""lm-eval on an in-memory model through HFLM: the local KJV tasks plus real lm-eval task names, unchanged.

The local task YAMLs, and those of `eval.include_path`, are found through `TaskManager(include_path=...)`.
Every requested task is checked and
its data loaded before the model does any work, so an unknown name or data missing offline is one clear line.
"""

from __future__ import annotations

import difflib
import os
import subprocess
from typing import TYPE_CHECKING

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slim.harness.errors import UserError
from slim.harness.evaluation.local_tasks import TASKS_DIR

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager


def go_offline() -> None:
    """No Hugging Face Hub requests: real tasks read only datasets already cached, and fail at once otherwise
    (online, an unreachable hub costs ~25 s of retries per task). The flags are read at import, so modules
    already imported are switched too."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def task_manager(include_paths: tuple[str, ...] | list[str] = ()) -> TaskManager:
    """lm-eval's task index with the local task directory and `include_paths` (eval.include_path, lm-eval's
    --include_path: folders of task YAMLs) added."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *include_paths])


def check_tasks(names: list[str], manager: TaskManager) -> None:
    """Each name must be a task, group or tag lm-eval knows, and its data must load (UserError otherwise)."""
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UserError(f"eval.tasks: unknown lm-eval task {name!r}{hint}")
    for name in names:
        try:
            manager.load(name)
        except Exception as error:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"eval.tasks: cannot load the data of task {name!r} ({first_line})") from error


def _metric_values(task_results: dict) -> dict[str, float]:
    """{"acc,none": 0.6, "acc_stderr,none": "N/A", "alias": ...} -> {"acc": 0.6}: numeric metrics, filter suffix
    dropped when it is lm-eval's default "none"."""
    values = {}
    for key, value in task_results.items():
        metric, _, filter_name = key.partition(",")
        if not filter_name or "_stderr" in metric or isinstance(value, str):
            continue
        values[metric if filter_name == "none" else f"{metric},{filter_name}"] = float(value)
    return values


def _quiet_git_hash() -> str | None:
    """lm-eval's results record `git describe` of the working directory; asked outside a checkout, git prints
    "fatal: not a git repository" on our stderr. The same question with git's stderr silenced (None outside one)."""
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def run_lm_eval(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[str], manager: TaskManager,
                limit: int | None, batch_size: int, num_fewshot: int | None = None) -> dict[str, dict[str, float]]:
    """Scores of `model` per task (and per group) as {task: {metric: value}}; `limit` docs per task."""
    from lm_eval import evaluator, simple_evaluate
    from lm_eval.models.huggingface import HFLM

    evaluator.get_git_commit_hash = _quiet_git_hash

    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                              log_samples=False, bootstrap_iters=0)
    model.train(was_training)
    return {name: _metric_values(scores) for name, scores in results["results"].items()}
