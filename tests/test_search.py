"""`slim search`: a declared space checked before any trial, workers sharing one journal-file study (each queued
trial run once), Lightning pruning, and the best trial exported as a recipe that `slim run` loads."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from slim.harness.cli.main import main
from slim.harness.config.load import CONF_DIR, load_config
from slim.harness.errors import UserError
from slim.harness.provenance import software
from slim.harness.search.spec import Param, SearchSpec, check_spec, parse_spec
from slim.harness.search.study import (
    RECIPE_FILE,
    WORKER_ATTR,
    _spawned_worker,
    check_storage,
    create_study,
    run_search,
    run_workers,
)
from slim.harness.verbosity import VERBOSE_ENV
from tests.fixtures.compress_teacher import TRIAL
from tests.search_echo import RACE_WORKERS, record_evaluation

pytestmark = pytest.mark.e2e

GOOD_LR, BAD_LR = 0.03, 1e-7


def trial_overrides(teacher) -> list[str]:
    """Each trial calibrates on its own split: the fixture's stats were calibrated on data.heldout_every=20."""
    teacher_dir, _, base = teacher
    return [*base, *TRIAL, f"compress.teacher={teacher_dir}", "tracking.wandb=true"]


def write_spec(tmp_path: Path, **fields) -> Path:
    spec = {"name": "lr", "space": {"train.lr": {"type": "categorical", "choices": [GOOD_LR, BAD_LR]}},
            "n_trials": 4, "output_dir": str(tmp_path / "search"),
            "pruner": {"kind": "median", "monitor": "val/ppl", "n_startup_trials": 1}, **fields}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_two_workers_share_one_journal_study_prune_and_export_the_best_recipe(teacher, tmp_path):
    """2 worker processes finish 4 trials on the default journal file; the 1e-7-LR trials, started after a 0.03-LR
    trial finished, are pruned by the Lightning callback; the best recipe reloads with the best LR."""
    # good, good, bad, bad: the two workers take the good ones first, so a finished trial exists before a bad one
    spec = write_spec(tmp_path, enqueue=[{"train.lr": lr} for lr in (GOOD_LR, GOOD_LR, BAD_LR, BAD_LR)])
    start = time.perf_counter()
    assert main(["search", str(spec), *trial_overrides(teacher), "--workers", "2"]) == 0
    print(f"search with 2 workers: {time.perf_counter() - start:.0f}s")

    journal = JournalStorage(JournalFileBackend(str(tmp_path / "search" / "study.journal")))
    study = optuna.load_study(study_name="lr", storage=journal)
    states = [trial.state for trial in study.trials]
    assert len(states) == 4 and all(state.is_finished() for state in states), states
    pruned = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.PRUNED]
    assert {trial.params["train.lr"] for trial in pruned} >= {BAD_LR}, [(t.params, t.state) for t in study.trials]
    assert all(set(trial.intermediate_values) <= {2, 4} for trial in study.trials)  # keyed by optimizer step
    assert study.best_trial.params == {"train.lr": GOOD_LR}
    # a pruned trial keeps its last val/ppl: a perplexity like the finished trials' values (a loss would be ~7 nats)
    assert all(trial.value > study.best_value for trial in pruned), [(t.value, t.state) for t in study.trials]

    recipe = load_config(files=[str(tmp_path / "search" / RECIPE_FILE)])
    assert recipe.train.lr == GOOD_LR and recipe.train.max_steps == 4
    # a model block is not the teacher the trials cut (compress.teacher): the recipe leaves it out
    assert "\nmodel:" not in (tmp_path / "search" / RECIPE_FILE).read_text()
    assert recipe.run_dir == str((tmp_path / "search" / "best").resolve())
    summary = json.loads((tmp_path / "search" / "search_summary.json").read_text())
    assert summary["trials"]["pruned"] == len(pruned) and summary["best"]["params"] == {"train.lr": GOOD_LR}
    assert summary["software"] == software()
    best_dir = tmp_path / "search" / "trials" / f"{study.best_trial.number:04d}"
    assert list((best_dir / "wandb").glob("offline-run-*/run-*.wandb"))  # each trial is a tracked run

    rerun = run_search(parse_spec(spec, overrides=trial_overrides(teacher)), workers=2)  # a finished study: no trials
    assert sum(rerun["trials"].values()) == 4 and rerun["best"]["number"] == study.best_trial.number


def race_spec(tmp_path: Path, **fields) -> SearchSpec:
    """12 queued trials of a one-int space, as many as the study runs."""
    fields = {"enqueue": tuple({"x": x} for x in range(12)), "space": (Param("x", "int", low=0, high=1000),),
              "n_trials": 12, **fields}
    return SearchSpec(name="race", path="race.yaml", output_dir=str(tmp_path / "search"), **fields)


@pytest.mark.slow
def test_workers_on_the_default_storage_run_each_queued_trial_exactly_once(tmp_path):
    """3 spawned workers popping 12 queued trials from the default journal file: each queued param set is evaluated
    once, by one worker, and every trial completes (on SQLite two workers can pop one trial, and the second to
    finish fails with "Cannot tell a COMPLETE trial")."""
    spec = race_spec(tmp_path)
    study = create_study(spec)
    create_study(spec)  # a rerun reopens the study and queues nothing twice
    assert len(study.trials) == 12
    run_workers(spec, RACE_WORKERS, evaluate=record_evaluation)
    evaluated = [json.loads(path.read_text())["x"] for path in (tmp_path / "search").glob("evaluated-*.json")]
    assert sorted(evaluated) == list(range(12))
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 12
    assert [trial.params["x"] for trial in study.trials] == list(range(12))
    # each spawned worker's output went to its own log, not to the terminal where their bars would interleave
    assert sorted(path.name for path in (tmp_path / "search").glob("worker-*.log")) == [
        f"worker-{index}.log" for index in range(RACE_WORKERS)]


@pytest.mark.slow
def test_searches_started_together_sample_apart(tmp_path):
    """3 workers that all believe they are the first (worker index 0, as `slim search` started on 3 machines at once
    is) sample 9 fresh trials in lockstep: the storage gives each its own seed, so no two trials draw the same
    parameters (with seed + 0 each, the three repeated each other trial for trial)."""
    spec = race_spec(tmp_path, enqueue=(), space=(Param("x", "float", low=0.0, high=1.0),), n_trials=9)
    study = create_study(spec)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_spawned_worker, args=(spec, 0, record_evaluation)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 9 and all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    assert len({trial.params["x"] for trial in trials}) == 9
    assert len([name for name in study.user_attrs if name.startswith(WORKER_ATTR)]) == 3


def test_a_rerun_queues_each_enqueue_entry_once(tmp_path):
    """Reopening the study queues only the entries it lacks: after a kill between two entries the rest follow, an
    entry listed twice is queued twice, and a second reopen queues nothing."""
    create_study(race_spec(tmp_path, enqueue=({"x": 1},)))  # killed after the first entry
    spec = race_spec(tmp_path, enqueue=({"x": 1}, {"x": 1}, {"x": 2}))
    create_study(spec)
    study = create_study(spec)
    assert [trial.system_attrs["fixed_params"] for trial in study.trials] == [{"x": 1}, {"x": 1}, {"x": 2}]


def test_storage_refuses_an_old_default_study_and_warns_on_shared_sqlite(tmp_path, caplog):
    """A `study.db` left by the old SQLite default is refused in one line, not silently replaced by a new study;
    several workers on a named SQLite file get a one-line warning, one worker none; a journal file that cannot be
    created is one line naming `storage`."""
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "study.db").touch()
    with pytest.raises(UserError, match=r"race.yaml: storage: .*study.db holds this search's study from an older"):
        check_storage(race_spec(tmp_path), workers=1)
    sqlite = race_spec(tmp_path, storage=f"sqlite:///{tmp_path / 'search' / 'study.db'}")
    with caplog.at_level(logging.WARNING, logger="slim.harness.search.study"):
        check_storage(sqlite, workers=1)
        assert not caplog.records
        check_storage(sqlite, workers=2)
    assert [record.getMessage().count("\n") for record in caplog.records] == [0]
    assert "storage: SQLite can hand one queued trial to two of the 2 workers" in caplog.records[0].getMessage()
    with pytest.raises(UserError, match=r"race.yaml: storage: cannot open '.*/missing/study.journal'"):
        create_study(race_spec(tmp_path, storage=str(tmp_path / "missing" / "study.journal")))


def test_unknown_space_key_fails_before_any_trial(teacher, tmp_path, capsys):
    """`slim search` with a space key missing from the config schema fails in one line naming it, before a study
    exists."""
    spec = write_spec(tmp_path, space={"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    assert main(["search", str(spec), *trial_overrides(teacher), "--workers", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "space: unknown config key 'train.lrr' (did you mean 'lr'?)" in error
    assert not (tmp_path / "search").exists()


def test_bad_space_value_and_enqueued_trial_are_refused(teacher, tmp_path):
    """A choice the registry does not know, or an enqueued key outside the space, fails before any trial."""
    reducer = {"compress.experts.reducer": {"type": "categorical", "choices": ["prune", "average_all"]}}
    with pytest.raises(UserError, match=r"space: .*'average_all'"):
        run_search(parse_spec(write_spec(tmp_path, space=reducer), overrides=trial_overrides(teacher)))
    with pytest.raises(UserError, match=r"enqueue\[0\]: unknown key 'train.seed'; valid: train.lr"):
        run_search(parse_spec(write_spec(tmp_path, enqueue=[{"train.seed": 1}]), overrides=trial_overrides(teacher)))
    assert not (tmp_path / "search").exists()


@pytest.mark.parametrize(("fields", "message"), [
    ({"trials": 3}, r"unknown key 'trials'; valid: name, .*n_trials"),
    ({"space": {"train.lr": {"type": "uniform", "low": 0, "high": 1}}}, r"space.train.lr.type: unknown 'uniform'"),
    ({"space": {"train.lr": {"type": "float", "low": 1, "high": 1}}}, r"space.train.lr: need numbers low < high"),
    ({"space": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, r"low: must be > 0 with log"),
    ({"space": {"train.max_steps": {"type": "int", "low": 1, "high": 2.5}}}, r"type int needs integer low and high"),
    ({"space": {"train.lr": {"type": "float", "low": 0, "high": 1, "step": 2}}}, r"space.train.lr: unknown key 'step'"),
    ({"objective": {"metric": "val/acc"}}, r"objective.metric: unknown 'val/acc'; valid: val_perplexity"),
    ({"pruner": {"kind": "hyperband"}}, r"pruner.kind: unknown 'hyperband'; valid: median, threshold, none"),
    ({"pruner": {"monitor": "val/loss"}}, r"pruner.monitor: 'val/loss' is not in the unit of objective.metric "
                                          r"'val_perplexity' .*; use 'val/ppl'"),
    ({"objective": {"metric": "wall_seconds"}}, r"pruner.kind: objective.metric 'wall_seconds' is not measured"),
    ({"n_trials": 0}, r"n_trials: need an integer >= 1"),
])
def test_malformed_spec_fails_naming_the_field(tmp_path, fields, message):
    """Spec structure errors are one line naming the spec key."""
    with pytest.raises(UserError, match=message):
        parse_spec(write_spec(tmp_path, **fields))


def test_pruner_monitors_the_objective_and_the_command_line_sets_n_trials(tmp_path):
    """The pruner's monitor defaults to the objective's in-training counterpart (val/ppl for val_perplexity);
    `--n-trials` replaces the spec's n_trials, and `n_trials=N` given as a config override names the flag."""
    spec = parse_spec(write_spec(tmp_path, pruner={"kind": "median"}), n_trials=2)
    assert (spec.pruner.monitor, spec.n_trials) == ("val/ppl", 2)
    with pytest.raises(UserError, match="--n-trials: need an integer >= 1"):
        parse_spec(write_spec(tmp_path), n_trials=0)
    with pytest.raises(UserError, match="'n_trials=3': n_trials is a search spec key, not a config key; use "
                                        "--n-trials 3"):
        parse_spec(write_spec(tmp_path), overrides=["n_trials=3"])


def test_shipped_search_specs_validate():
    """Every spec in conf/search/ parses and checks against the schema and the shipped teacher, so shipped studies
    cannot rot."""
    for path in sorted((CONF_DIR / "search").glob("*.yaml")):
        check_spec(parse_spec(path))


def test_quiet_mode_keeps_optunas_info_lines_out(tmp_path, monkeypatch):
    """Optuna resets its level to INFO when first imported; opening a study in quiet mode sets it back to WARNING
    (study created / trial finished lines only under --verbose)."""
    monkeypatch.setenv(VERBOSE_ENV, "0")
    optuna.logging.set_verbosity(optuna.logging.INFO)
    create_study(race_spec(tmp_path))
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    monkeypatch.setenv(VERBOSE_ENV, "1")
    optuna.logging.set_verbosity(optuna.logging.INFO)
    create_study(race_spec(tmp_path))
    assert optuna.logging.get_verbosity() == optuna.logging.INFO
