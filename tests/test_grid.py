"""`slim grid`: spec checks before any cell, stable cell keys, the SQLite store, failure isolation, resume, submitit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slim.harness.cli.main import main
from slim.harness.errors import UserError
from slim.harness.grid import ResultsStore, cell_kinds, expand, load_spec, prepare_grid, run_grid
from slim.harness.grid.figures import write_cell_figures
from slim.harness.grid.report import cell_results
from slim.harness.grid.runner import cell_log
from slim.reports.results import load_run_metrics
from tests.grid_echo import KILL_MARKER, SimulatedKill, calls, write_spec

pytestmark = pytest.mark.e2e

ABLATIONS = sorted((Path(__file__).resolve().parents[1] / "ablations").glob("table*.yaml"))


LR_AXIS = "axes:\n  train.lr: [0.1, 0.2, 0.3]\nmetrics: [value]\n"


def test_expansion_is_cartesian_and_keys_are_stable(tmp_path):
    """Axes × seeds in spec order; keys depend on the resolved config only (not the output folder)."""
    spec = load_spec(write_spec(tmp_path, "axes:\n  train.lr: [0.1, 0.2]\n  size:\n    small: {train.batch_size: 2}\n"
                                          "    big: {train.batch_size: 4}\nseeds: [0, 1]\n"))
    cells = expand(spec)
    assert [(c.axes["train.lr"], c.axes["size"], c.seed) for c in cells][:3] == [(0.1, "small", 0), (0.1, "small", 1),
                                                                               (0.1, "big", 0)]
    assert len(cells) == 8 and len({c.key for c in cells}) == 8
    assert [c.key for c in expand(spec, output_dir=str(tmp_path / "elsewhere"))] == [c.key for c in cells]
    assert cells[0].config.train.batch_size == 2 and cells[0].config.run_dir.endswith(cells[0].key)
    changed = expand(spec, overrides=["train.max_steps=7"])
    assert not {c.key for c in changed} & {c.key for c in cells}


def test_cell_key_hashes_the_full_config_and_the_results_version_but_not_output_paths():
    """Every resolved value counts, defaults included, and the harness's RESULTS_VERSION; output paths and fields
    added later at their neutral value do not."""
    import hashlib
    from dataclasses import asdict

    from slim.harness import provenance
    from slim.harness.config.schema import SlimConfig
    from slim.harness.grid.expand import PATH_FIELDS, cell_key

    config = SlimConfig()
    config.train.lr, config.run_dir = 0.5, "anywhere"
    stripped = asdict(SlimConfig())
    stripped["train"]["lr"] = 0.5
    for name in ("checkpoint_every_steps", "checkpoint_every_minutes", "stop_signals"):  # added later, at neutral
        del stripped["train"][name]
    for dotted in PATH_FIELDS:
        section, _, leaf = dotted.rpartition(".")
        (stripped[section] if section else stripped)[leaf] = ""
    payload = json.dumps({"kind": "run", "version": provenance.RESULTS_VERSION, "config": stripped}, sort_keys=True)
    assert cell_key("run", config) == hashlib.sha256(payload.encode()).hexdigest()[:16]


@pytest.mark.parametrize("body, message", [
    ("axes:\n  train.lrr: [0.1]\n", r"axes.train.lrr\[0.1\]: unknown config key 'train.lrr' \(did you mean 'lr'\?\)"),
    ("axes:\n  m:\n    a: {compress.experts.criterion: bogus}\nkind: compress\n",
     r"compress.experts.criterion: unknown expert criterion 'bogus'"),
    ("axes:\n  train.lr: [0.1]\nmetrics: [valeu]\n",
     r"metrics: unknown metric 'valeu' for kind 'test_echo'; valid: value"),
    ("axes:\n  train.lr: [0.1]\nmetrics: [value]\nreport: {rows: [lr], columns: [[value, V]]}\n",
     r"report.rows: unknown axis 'lr'; valid: train.lr"),
    ("kind: nope\n", r"kind: unknown grid cell kind 'nope'"),
    ("axis: {}\n", r"unknown spec key 'axis'"),
])
def test_bad_spec_fails_before_any_cell_naming_the_entry(tmp_path, body, message):
    """Unknown config keys, methods, metrics, axes and kinds are refused in one line; no store is created."""
    spec = write_spec(tmp_path, body.replace("kind: compress\n", ""), "bad.yaml")
    if "kind: compress" in body:
        spec.write_text(spec.read_text().replace("kind: test_echo", "kind: compress"))
    if "kind: nope" in body:
        spec.write_text(spec.read_text().replace("kind: test_echo\n", ""))
    with pytest.raises(UserError, match=message):
        prepare_grid(spec)
    assert not (tmp_path / "grid").exists()


def test_failing_cell_is_isolated_and_recorded(tmp_path):
    """A cell that raises is stored as failed with its error and traceback; the other cells finish."""
    grid = prepare_grid(write_spec(tmp_path, "axes:\n  train.lr: [0.1, 0.5, 0.3]\nmetrics: [value]\n"))
    rows = run_grid(grid)
    assert [row["status"] for row in rows] == ["done", "failed", "done"]
    assert rows[1]["error"] == "ValueError: bad cell" and "Traceback" in rows[1]["traceback"]
    assert rows[2]["metrics"] == {"value": pytest.approx(3.0)} and rows[0]["attempts"] == 1
    assert rows[0]["artifacts"]["run_dir"].endswith(rows[0]["key"]) and rows[0]["config"]["train"]["lr"] == 0.1


def test_killed_grid_resumes_without_redoing_finished_cells(tmp_path):
    """Killed on the 2nd of 3 cells: the rerun runs only the interrupted and the remaining cell."""
    grid = prepare_grid(write_spec(tmp_path, LR_AXIS))
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / KILL_MARKER).touch()
    with pytest.raises(SimulatedKill):
        run_grid(grid)
    assert [row["status"] for row in grid.rows()] == ["done", "running", "pending"]
    rows = run_grid(prepare_grid(write_spec(tmp_path, LR_AXIS)))
    assert [row["status"] for row in rows] == ["done", "done", "done"]
    assert calls(tmp_path) == ["0.1 0", "0.2 0", "0.2 0", "0.3 0"]
    assert [row["attempts"] for row in rows] == [1, 2, 1]
    run_grid(grid)
    assert len(calls(tmp_path)) == 4


def test_parallel_workers_record_the_same_rows(tmp_path, capfd):
    """Two worker processes give the metrics of the sequential runner, a failing cell isolated; each worker's output
    goes to its cell's log, not to the terminal, where the bars of two workers would interleave."""
    grid = prepare_grid(write_spec(tmp_path, "axes:\n  train.lr: [0.1, 0.5]\nmetrics: [value]\n"))
    rows = run_grid(grid, workers=2)
    assert [row["status"] for row in rows] == ["done", "failed"] and rows[0]["metrics"] == {"value": pytest.approx(1.0)}
    terminal = capfd.readouterr()
    assert "echo cell" not in terminal.out + terminal.err
    assert [cell_log(cell).read_text() for cell in grid.cells] == ["echo cell lr=0.1\n", "echo cell lr=0.5\n"]


def test_submitit_local_executor_matches_inprocess(tmp_path):
    """The same 2-cell grid through submitit's local executor stores the rows of the in-process runner."""
    body = "axes:\n  train.lr: [0.1, 0.3]\nmetrics: [value]\nslurm: {timeout_min: 10}\n"
    inprocess = run_grid(prepare_grid(write_spec(tmp_path, body), output_dir=str(tmp_path / "a")))
    submitted = run_grid(prepare_grid(write_spec(tmp_path, body), output_dir=str(tmp_path / "b")),
                         launcher="submitit", cluster="local")
    same = ("key", "status", "axes", "seed", "metrics", "error")
    assert [{k: row[k] for k in same} for row in submitted] == [{k: row[k] for k in same} for row in inprocess]
    assert all(row["status"] == "done" and "job" in row["worker"] for row in submitted)


def test_submitit_jobs_pass_the_cluster_settings_and_requeue_into_the_same_cell():
    """account, qos, constraint, setup lines and the signal delay reach submitit; a cell's job is checkpointable:
    preempted, it resubmits the same call (the cell reruns in its run_dir and resumes there)."""
    import submitit

    from slim.harness.grid.launch_submitit import CellJob, executor_parameters
    from slim.harness.grid.spec import SlurmParams

    slurm = SlurmParams(partition="gpu", account="proj1", qos="high", constraint="h100",
                        setup=["module load cuda", "export HF_HUB_OFFLINE=1"], signal_delay_s=300)
    params = executor_parameters((2, 8), slurm, "grid-x")
    assert {key: params[key] for key in ("slurm_account", "slurm_qos", "slurm_constraint", "slurm_setup",
                                         "slurm_signal_delay_s", "nodes", "tasks_per_node")} == {
        "slurm_account": "proj1", "slurm_qos": "high", "slurm_constraint": "h100",
        "slurm_setup": ["module load cuda", "export HF_HUB_OFFLINE=1"], "slurm_signal_delay_s": 300, "nodes": 2,
        "tasks_per_node": 8}
    assert "slurm_account" not in executor_parameters((1, 0), SlurmParams(), "grid-y")
    job = CellJob()
    again = job.checkpoint("store.sqlite", "cell", "kind")
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is job and again.args == ("store.sqlite", "cell", "kind")


def test_cli_grid_then_report_writes_the_table(tmp_path, capsys):
    """`slim grid` runs the cells with overrides applied to each, `slim report` renders the store as LaTeX."""
    spec = write_spec(tmp_path, "axes:\n  train.lr: [0.1, 0.3]\nseeds: [0, 1]\nmetrics: [value]\n"
                                "report: {caption: Toy, label: tab:toy, rows: [train.lr], columns: [[value, Value]]}\n")
    assert main(["grid", str(spec), "train.max_steps=3"]) == 0
    assert "toy: 4/4 cells done, 0 failed" in capsys.readouterr().out
    assert main(["report", str(spec)]) == 0  # the overrides the grid ran with, recorded in its folder
    assert "as the last `slim grid` here ran: train.max_steps=3" in capsys.readouterr().out
    tex = (tmp_path / "grid" / "report" / "toy.tex").read_text()
    assert "Value" in tex and "1.50" in tex  # lr 0.1: mean over seeds 0 and 1 of 10 lr + seed
    assert main(["report", str(spec), "train.max_steps=4"]) == 2  # other overrides, other cells: none finished
    assert "no finished cells" in capsys.readouterr().err


def test_corrupt_store_is_reported_not_recreated(tmp_path):
    """A results file that is not a SQLite database fails with its path and is left untouched."""
    store = tmp_path / "results.sqlite"
    store.write_bytes(b"not a database, but someone's results" * 100)
    with pytest.raises(UserError, match=f"results store {store} is corrupt"):
        ResultsStore(store)
    assert store.read_bytes().startswith(b"not a database")


@pytest.mark.parametrize("path", ABLATIONS, ids=[path.stem for path in ABLATIONS])
def test_ablation_specs_validate(path):
    """Every shipped ablation spec expands and passes every cell's checks at its tiny default scale."""
    grid = prepare_grid(path)
    assert grid.cells and grid.spec.report["columns"]


REAL = ["train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.val_every=2",
        "train.val_batches=1", "distill.loss=kd+lm", "compress.depth.num_drop=1", "compress.experts.num_experts=4"]


def test_real_compress_and_run_cells_on_the_tiny_teacher(teacher, tmp_path):
    """One one-shot `compress` cell and one trained `run` cell record metrics, artifacts and curves for reports."""
    teacher_dir, stats, base = teacher
    spec = tmp_path / "real.yaml"
    spec.write_text(f"name: real\noutput_dir: {tmp_path / 'grid'}\nmetrics: [val_perplexity, params_active]\n"
                    "axes:\n  setting:\n    One-shot: {kind: compress}\n    Trained: {kind: run}\n")
    grid = prepare_grid(spec, overrides=[*base, *REAL, f"compress.teacher={teacher_dir}", f"compress.stats={stats}"])
    rows = run_grid(grid)
    assert [row["status"] for row in rows] == ["done", "done"], [row["error"] for row in rows]
    one_shot, trained = rows
    assert one_shot["metrics"]["params_active"] == trained["metrics"]["params_active"]
    assert trained["metrics"]["steps"] == 2 and Path(trained["artifacts"]["student"], "config.json").is_file()
    assert json.loads(Path(trained["artifacts"]["run_dir"], "run_summary.json").read_text())["distill"]["steps"] == 2
    results = cell_results(rows, "val/loss")
    assert [result.axes for result in results] == [{"setting": "One-shot"}, {"setting": "Trained"}]
    assert results[1].curves == {"val/loss": trained["artifacts"]["metrics"]} and not results[0].curves
    logged = {name for values in load_run_metrics(trained["artifacts"]["metrics"]).values() for name in values}
    assert logged - {"epoch"} <= set(cell_kinds.get("run").curves)  # what report.curve.metric is checked against
    students = [Path(row["artifacts"]["student"]) for row in rows]  # compressed; distilled (a copy of its report)
    assert write_cell_figures(rows) == students  # what `slim report` draws beside each student
    assert all((student / "compression_merge_map.png").is_file() for student in students)


def test_teacher_row_comes_from_the_first_finished_cell_reporting_it():
    """report.teacher_from fills the teacher row from a metric every cell measures; unfinished cells are ignored."""
    from slim.harness.grid.report import teacher_row

    rows = [{"status": "failed", "metrics": {"teacher_ppl": 1.0}},
            {"status": "done", "metrics": {"teacher_ppl": 36.7, "ppl": 44.0}},
            {"status": "done", "metrics": {"teacher_ppl": 36.9}}]
    assert teacher_row(rows, {"ppl": "teacher_ppl"}) == {"ppl": 36.7}
    assert teacher_row(rows, {"ppl": "missing"}) is None


def test_a_field_added_later_keeps_stored_cells_until_it_leaves_its_neutral_value():
    """A schema field marked added_later changes no cell key while it holds its neutral (as-before) value, so
    yesterday's cells stay done; set to another value it gives them new keys, as a plain new field always does."""
    from dataclasses import dataclass, field

    from slim.harness.config.schema import SlimConfig, TrainConfig, added_later, at_least
    from slim.harness.grid.expand import cell_key

    @dataclass
    class TrainWithKnob(TrainConfig):
        knob: int = added_later(at_least(0, 0), neutral=0)

    @dataclass
    class SlimWithKnob(SlimConfig):
        train: TrainWithKnob = field(default_factory=TrainWithKnob)

    @dataclass
    class TrainWithPlain(TrainConfig):
        plain: int = 0

    @dataclass
    class SlimWithPlain(SlimConfig):
        train: TrainWithPlain = field(default_factory=TrainWithPlain)

    yesterday = cell_key("run", SlimConfig())
    today = SlimWithKnob()
    assert cell_key("run", today) == yesterday
    today.train.knob = 1
    assert cell_key("run", today) != yesterday
    assert cell_key("run", SlimWithPlain()) != yesterday
