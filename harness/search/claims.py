"""Exact trial budgets for any number of processes on one study (spawned workers, or `slim search` started on
several machines over one output dir): a process takes a trial only under a lock file beside the storage, and only
while fewer than `n_trials` trials count toward the budget, so together they finish exactly `n_trials`.

A trial counts when it completed, was pruned, or failed in its objective (a UserError or a NaN), or while it runs
under a live lease: its
process renews `lease_until` every RENEW_SECONDS while the objective runs. A trial left running by a killed process
stops counting when its lease ends; the next claim marks it failed (without `ended_by_worker`, so it never counts)
and a replacement runs in its place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from slim.harness.errors import UserError

LOCK_NAME = "claims"  # <output_dir>/claims.lock exists while a process claims
LEASE_ATTR = "lease_until"  # a running trial's lease end, in seconds since the epoch
ENDED_ATTR = "ended_by_worker"  # set when the objective returned or raised, not when a process was killed
LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0

logger = logging.getLogger(__name__)


def counts_toward_budget(trial: FrozenTrial, now: float) -> bool:
    """Whether `trial` uses one of the study's `n_trials` (queued trials wait to be claimed and do not)."""
    if trial.state == TrialState.RUNNING:
        return trial.user_attrs.get(LEASE_ATTR, 0.0) > now
    if trial.state == TrialState.FAIL:
        return bool(trial.user_attrs.get(ENDED_ATTR))
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def budget_used(study: optuna.Study, now: float | None = None) -> int:
    """Trials of `study` that count toward its budget now."""
    now = time.time() if now is None else now
    return sum(counts_toward_budget(trial, now) for trial in study.get_trials(deepcopy=False))


@contextmanager
def _locked(lock_dir: str | Path) -> Iterator[None]:
    lock = JournalFileOpenLock(str(Path(lock_dir) / LOCK_NAME))  # O_EXCL file: works on NFS too
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def claim(study: optuna.Study, n_trials: int, lock_dir: str | Path) -> optuna.Trial | None:
    """A trial for this process (a queued one first, as `study.ask` pops them), or None once `n_trials` count."""
    with _locked(lock_dir):
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not counts_toward_budget(trial, now):
                logger.warning("trial %d was left running by a process that stopped (its lease ended); marked failed, "
                               "a replacement runs", trial.number)
                study.tell(trial.number, state=TrialState.FAIL)
        if budget_used(study, now) >= n_trials:
            return None
        trial = study.ask()
        trial.set_user_attr(LEASE_ATTR, now + LEASE_SECONDS)
        return trial


@contextmanager
def _renewing(trial: optuna.Trial) -> Iterator[None]:
    """Renew the trial's lease every RENEW_SECONDS until the block ends."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_SECONDS):
            trial.set_user_attr(LEASE_ATTR, time.time() + LEASE_SECONDS)

    renewer = threading.Thread(target=renew, name=f"lease-trial-{trial.number}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()


def run_claimed(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> None:
    """Run `objective` on a claimed trial and tell the study, as `study.optimize` would: a pruned trial stays pruned,
    a UserError (a refused config, a diverged run) fails it and the search goes on. Anything else (Ctrl-C, a stop
    signal, a bug) fails it without counting, so a rerun replaces it, and is raised."""
    state: TrialState | None = None
    value: float | None = None
    with _renewing(trial):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except UserError as error:
            logger.warning("trial %d failed: %s", trial.number, error)
            state = TrialState.FAIL
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
    trial.set_user_attr(ENDED_ATTR, True)
    study.tell(trial, value, state=state)
