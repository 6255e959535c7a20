"""Exact trial budgets: what counts toward `n_trials` (complete, pruned, failed in the objective, running under a
live lease), a trial left running by a dead process replaced once its lease ends, the lease renewed while a trial
runs, and 3 searches started together on one output dir, 20 times under load, finishing exactly the asked trials
with no parameters drawn twice."""

from __future__ import annotations

import math
import multiprocessing
import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

from slim.harness.errors import UserError
from slim.harness.search import claims
from slim.harness.search.claims import LEASE_ATTR, budget_used, claim, run_claimed
from slim.harness.search.spec import Param, SearchSpec
from tests.search_echo import RACE_WORKERS, search_in_lockstep


def _objective(outcome):
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 1.0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return objective


def test_what_counts_toward_the_budget(tmp_path):
    """Complete, pruned, a refused config and a NaN count; Ctrl-C fails the trial without counting (a rerun replaces
    it), and once the budget is used no trial is claimed."""
    study = optuna.create_study()
    outcomes = [1.0, optuna.TrialPruned(), UserError("refused"), math.nan]
    for outcome in outcomes:
        run_claimed(study, claim(study, 4, tmp_path), _objective(outcome))
    trial = claim(study, 5, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_claimed(study, trial, _objective(KeyboardInterrupt()))
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL, TrialState.FAIL]
    assert budget_used(study) == 4
    assert claim(study, 4, tmp_path) is None
    assert claim(study, 5, tmp_path).number == 5
    assert not (tmp_path / "claims.lock").exists()


def test_a_trial_left_running_is_replaced_when_its_lease_ends(tmp_path, monkeypatch, caplog):
    """A running trial counts while its lease lasts; after it ends, the next claim marks it failed (never counted)
    and takes a new trial in its place."""
    study = optuna.create_study()
    orphan = claim(study, 1, tmp_path)
    lease = study.trials[0].user_attrs[LEASE_ATTR]
    assert budget_used(study) == 1 and claim(study, 1, tmp_path) is None
    monkeypatch.setattr(claims.time, "time", lambda: lease + 1)
    replacement = claim(study, 1, tmp_path)
    assert replacement is not None and replacement.number == orphan.number + 1
    assert study.trials[0].state == TrialState.FAIL and budget_used(study, lease + 1) == 1
    assert f"trial {orphan.number} was left running by a process that stopped" in caplog.text


def test_a_running_trial_renews_its_lease(tmp_path, monkeypatch):
    """While the objective runs, its lease is pushed forward: the objective waits on an event the renewal sets (ten
    minutes at most), so nothing here depends on how fast the machine is."""
    monkeypatch.setattr(claims, "RENEW_SECONDS", 0.0)
    study = optuna.create_study()
    trial = claim(study, 1, tmp_path)
    first = study.trials[0].user_attrs[LEASE_ATTR]
    renewed = threading.Event()
    set_user_attr = trial.set_user_attr

    def recording(key: str, value: object) -> None:
        set_user_attr(key, value)
        if key == LEASE_ATTR:
            renewed.set()

    trial.set_user_attr = recording
    run_claimed(study, trial, lambda running: float(renewed.wait(timeout=600)))
    assert study.trials[0].value == 1.0 and study.trials[0].user_attrs[LEASE_ATTR] >= first


@pytest.mark.slow
@pytest.mark.e2e
def test_three_searches_started_together_finish_exactly_the_asked_trials(tmp_path):
    """20 times, under load (a process spinning on a core): 3 searches on one output dir, their objective in
    lockstep so that their claims meet at the lock, finish exactly n_trials = 6 trials, each with its own
    parameters (with per-process counts they ran 6 each; with one seed each they drew the same parameters)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    context = multiprocessing.get_context("spawn")
    try:
        for attempt in range(20):
            spec = SearchSpec(name="exact", path="exact.yaml", output_dir=str(tmp_path / f"search-{attempt}"),
                              space=(Param("x", "float", low=0.0, high=1.0),), n_trials=6, enqueue=())
            searches = [context.Process(target=search_in_lockstep, args=(spec,)) for _ in range(RACE_WORKERS)]
            for search in searches:
                search.start()
            for search in searches:
                search.join(timeout=600)
            assert [search.exitcode for search in searches] == [0] * RACE_WORKERS, attempt
            study = optuna.load_study(study_name="exact", storage=spec_storage(spec))
            trials = study.get_trials(deepcopy=False)
            assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 6, attempt
            assert len({trial.params["x"] for trial in trials}) == 6, attempt
    finally:
        burner.kill()
        burner.wait()


def spec_storage(spec: SearchSpec) -> optuna.storages.BaseStorage:
    from slim.harness.search.study import open_storage

    return open_storage(spec)
