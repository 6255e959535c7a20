"""Benchmark metrics as grid columns (`<task>/<metric>[,<filter>]` checked against lm-eval's task configs), the
names the store gives them, `slim grid --dry-run`, and axis / seed overrides that narrow a grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli.main import main
from harness.errors import UserError
from harness.evaluation.task_metrics import check_task_metric, evaluated_tasks, store_metrics, task_index
from harness.grid import expand, load_spec, prepare_grid
from harness.grid.expand import select_cells

TINY_SCALE = "scale: [conf/recipes/tiny-slimqwen.yaml, ablations/tiny.yaml]\n"


@pytest.fixture(scope="module")
def index():
    return task_index(())


def benchmark_spec(tmp_path: Path, metrics: str, tasks: str = "[mmlu, gsm8k]") -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(f"name: bench\nkind: run_eval\noutput_dir: {tmp_path / 'grid'}\n{TINY_SCALE}"
                    f"base: {{eval.tasks: {tasks}}}\naxes:\n  distill.loss: [kd, full]\nmetrics: {metrics}\n")
    return path


@pytest.mark.parametrize("name", ["mmlu/acc", "mmlu_pro/exact_match", "gsm8k/exact_match,flexible-extract",
                                  "kjv_complete/exact_match", "kjv_complete/exact_match,strip", "humaneval/pass_at_k",
                                  "mmlu_abstract_algebra/acc"])
def test_declared_task_metrics_pass(index, name):
    """Groups report their aggregate metric, tasks their metric_list under their filters (a `!function` metric by
    its function's name); a task with one filter may leave it out."""
    check_task_metric(name, index)


@pytest.mark.parametrize("name, message", [
    ("mmluu/acc", r"unknown lm-eval task 'mmluu' \(did you mean 'mmlu'"),
    ("mmlu/exact_match", r"task 'mmlu' declares no metric 'exact_match'; valid: acc"),
    ("gsm8k/exact_match", r"under several filters; name one: gsm8k/exact_match,strict-match, "
                          r"gsm8k/exact_match,flexible-extract"),
    ("kjv_complete/exact_match,none", r"no filter 'none' for 'exact_match'; valid: kjv_complete/exact_match,strip"),
    ("kjv/acc", r"'kjv' reports no metric of its own .* name one of its tasks \(kjv_cloze"),
])
def test_undeclared_task_metrics_are_refused(index, name, message):
    """Unknown task, undeclared metric, an ambiguous or unknown filter and a tag: one line naming the valid ones."""
    with pytest.raises(UserError, match=message):
        check_task_metric(name, index)


def test_groups_and_tags_expand_to_their_tasks(index):
    """An lm-eval run of a group or tag reports the group and every member task (what a column may read)."""
    assert {"mmlu", "mmlu_stem", "mmlu_abstract_algebra"} <= evaluated_tasks(["mmlu"], index)
    assert evaluated_tasks(["kjv"], index) == {"kjv", "kjv_cloze", "kjv_next_verse", "kjv_complete"}


def test_store_keeps_the_filter_and_the_plain_name_of_a_single_filter():
    """`exact_match,strip` is stored under its lm-eval key and, being the metric's only filter, its plain name;
    a metric under two filters keeps only the filtered names; lm-eval's `none` filter was dropped before."""
    stored = store_metrics({"kjv_complete": {"exact_match,strip": 0.25}, "kjv_cloze": {"acc": 0.5},
                            "gsm8k": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.2}})
    assert stored == {"kjv_complete/exact_match,strip": 0.25, "kjv_complete/exact_match": 0.25,
                      "kjv_cloze/acc": 0.5, "gsm8k/exact_match,strict-match": 0.1,
                      "gsm8k/exact_match,flexible-extract": 0.2}


def test_spec_metric_is_checked_when_the_grid_is_prepared(tmp_path):
    """A bad benchmark metric fails `prepare_grid` naming the spec; no output folder is made."""
    with pytest.raises(UserError, match=r"bench.yaml: metrics: metric 'gsm8k/exact_match': .* several filters"):
        prepare_grid(benchmark_spec(tmp_path, "[val_perplexity, mmlu/acc, gsm8k/exact_match]"))
    assert not (tmp_path / "grid").exists()


def test_dry_run_lists_the_cells_of_a_spec_with_mmlu(tmp_path, capsys):
    """`slim grid --dry-run` validates a spec asking for mmlu/acc and lists each cell (key, kind, status,
    overrides), the shared calibration passes and the metrics no cell evaluates, running nothing, creating no store."""
    spec = benchmark_spec(tmp_path, '[val_perplexity, mmlu/acc, "gsm8k/exact_match,strict-match", kjv_cloze/acc]')
    assert main(["grid", "--dry-run", str(spec), "train.max_steps=30"]) == 0
    out = capsys.readouterr().out.splitlines()
    keys = [cell.key for cell in expand(load_spec(spec), overrides=["train.max_steps=30"])]
    assert out[0].startswith("bench: 2 cells (2 new)") and "nothing run" in out[0]
    assert [line.split()[:3] for line in out[1:3]] == [[key, "run_eval", "new"] for key in keys]
    assert out[1].endswith("distill.loss=kd train.seed=0") and out[2].endswith("distill.loss=full train.seed=0")
    assert out[3] == "bench: 2 cells calibrate in 1 shared pass (one per teacher, calibration and data config)"
    assert out[4] == ("bench: benchmark metrics no cell evaluates (not in eval.tasks at this scale), left out of "
                      "the report: kjv_cloze/acc")
    assert not (tmp_path / "grid").exists()


def test_axis_and_seed_overrides_narrow_the_grid_without_changing_keys(tmp_path):
    """`axes.<axis>=[...]` keeps those values, `seeds=[...]` replaces the seeds; each cell keeps its key."""
    spec = load_spec(Path("ablations/table2.yaml"))
    full = {(cell.axes["method"], cell.axes["setting"], cell.axes["compress.experts.criterion"]): cell.key
            for cell in expand(spec)}
    cells = expand(spec, overrides=['axes.method=[Prune, "Merge (router weights)"]', "axes.setting=Trained",
                                    "axes.compress.experts.criterion=freq"])
    assert [(cell.axes["method"], cell.key) for cell in cells] == [
        (method, full[(method, "Trained", "freq")]) for method in ("Prune", "Merge (router weights)")]
    assert [cell.seed for cell in expand(spec, overrides=["axes.setting=Trained", "axes.method=Prune",
                                                         "axes.compress.experts.criterion=freq", "seeds=[0, 1, 2]"])
            ] == [0, 1, 2]
    with pytest.raises(UserError, match=r"axes.method=Prun: axis 'method' has no value 'Prun'; valid: Prune"):
        select_cells(spec, ["axes.method=Prun"])
