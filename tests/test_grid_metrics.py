"""Benchmark metrics as grid columns (`<task>/<metric>[,<filter>]` checked against lm-eval's task configs), the
names the store gives them, `slim grid --dry-run`, and axis / seed overrides that narrow a grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from slim.harness.cli.main import main
from slim.harness.errors import UserError
from slim.harness.evaluation.task_metrics import check_task_metric, evaluated_tasks, store_metrics, task_index
from slim.harness.grid import expand, load_spec, prepare_grid, run_grid
from slim.harness.grid.expand import select_cells

pytestmark = pytest.mark.e2e

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


ECHO_TASK = """task: echo_words
custom_dataset: !function echo_data.load
test_split: test
output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
generation_kwargs: {until: ["\\n"], do_sample: false, max_gen_toks: 4}
filter_list:
  - name: first_word
    filter:
      - {function: regex, regex_pattern: "(\\\\w+)"}
      - {function: take_first}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
"""
ECHO_DATA = """from datasets import Dataset, DatasetDict


def load(**_metadata):
    items = [{"context": "In the beginning God created the", "target": "heaven"},
             {"context": "And God said, Let there be", "target": "light"}]
    return DatasetDict({"test": Dataset.from_list(items)})
"""
TINY_RUN_EVAL = ["train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.val_every=2",
                 "train.val_batches=1", "distill.loss=kd", "compress.experts.num_experts=4", "eval.device=cpu",
                 "eval.batch_size=2", "eval.perplexity_batches=1", "eval.efficiency.enabled=false",
                 "eval.mtp.num_prompts=1", "eval.mtp.prompt_len=8", "eval.mtp.new_tokens=4"]


def test_local_task_with_a_filter_is_read_from_the_store(teacher, tmp_path):
    """A task folder of our own (eval.include_path, lm-eval's --include_path) whose metric has one filter: the spec
    names it with and without the filter, both are checked against its YAML, and a run_eval cell stores both."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "echo_words.yaml").write_text(ECHO_TASK)
    (tasks / "echo_data.py").write_text(ECHO_DATA)
    teacher_dir, stats, base = teacher
    overrides = [*base, *TINY_RUN_EVAL, f"compress.teacher={teacher_dir}", f"compress.stats={stats}"]

    def spec(filter_name: str) -> Path:
        path = tmp_path / f"echo-{filter_name}.yaml"
        path.write_text(f"name: echo\nkind: run_eval\noutput_dir: {tmp_path / 'grid'}\n"
                        f"base: {{eval.tasks: [echo_words], eval.include_path: [{tasks}]}}\n"
                        "axes:\n  train.lr: [0.001]\n"
                        f'metrics: [val_perplexity, "echo_words/exact_match,{filter_name}", echo_words/exact_match]\n')
        return path

    with pytest.raises(UserError, match=r"task 'echo_words' has no filter 'strip' for 'exact_match'"):
        prepare_grid(spec("strip"), overrides=overrides)
    grid = prepare_grid(spec("first_word"), overrides=overrides)
    assert not grid.notes
    [row] = run_grid(grid)
    assert row["status"] == "done", row["error"]
    score = row["metrics"]["echo_words/exact_match,first_word"]
    assert row["metrics"]["echo_words/exact_match"] == score and 0.0 <= score <= 1.0


def test_vllm_backend_is_skipped_where_it_cannot_run():
    """Without vllm (or a GPU) the backend is recorded as skipped with the reason and adds no metric; a backend that
    ran adds `<backend>_<ratio>` metrics; an unknown backend name is refused with the closest one."""
    from slim.harness.config.schema import EfficiencyConfig, EvalConfig
    from slim.harness.evaluation.backends import backend_summaries, inference_backends
    from slim.harness.evaluation.evaluate import validate_eval_config
    from slim.harness.grid.cells.run_eval import eval_metrics

    reason = inference_backends.get("vllm").unavailable()
    if reason is None:
        pytest.skip("vllm runs here")
    skipped = backend_summaries(["vllm"], "student", "teacher", [[1, 2, 3]], EfficiencyConfig())
    assert skipped == {"vllm": {"skipped": reason}}
    assert eval_metrics({"efficiency": {"backends": skipped}}) == {}
    ran = {"vllm": {"student_vs_teacher": {"prefill_speedup": 2.0, "decode_speedup": 1.5}}}
    assert eval_metrics({"efficiency": {"backends": ran}}) == {"vllm_prefill_speedup": 2.0, "vllm_decode_speedup": 1.5}
    config = EvalConfig()
    config.efficiency.backends = ["vlm"]
    with pytest.raises(UserError, match=r"eval.efficiency.backends: unknown inference backend 'vlm' \(did you mean "
                                        r"'vllm'\?\)"):
        validate_eval_config(config)


@pytest.mark.parametrize("table, scale, paper", [("table1", "paper", "mmlu/acc"),
                                                 ("table2", "paper", "bbh/exact_match"),
                                                 ("table10", "paper-table10", "mmmlu/acc")])
def test_paper_scale_files_pick_the_papers_columns(table, scale, paper):
    """With ablations/scale/<paper>.yaml the cells evaluate the paper's lm-eval tasks: every paper column of the
    spec is evaluated and kept, the KJV ones are left out (and the other way round at the tiny scale)."""
    files = ["conf/recipes/tiny-slimqwen.yaml", "ablations/tiny.yaml", f"ablations/scale/{scale}.yaml"]
    narrow = ["axes.setting=Trained", "axes.method=Prune", "axes.compress.experts.criterion=freq"]
    overrides = narrow if table == "table2" else []
    columns = [column[0] for column in prepare_grid(f"ablations/{table}.yaml", files, overrides).spec.report["columns"]]
    assert paper in columns and not any(column.startswith("kjv") for column in columns)
    tiny = [column[0] for column in prepare_grid(f"ablations/{table}.yaml", None, overrides).spec.report["columns"]]
    assert paper not in tiny and any(column.startswith("kjv") for column in tiny)
