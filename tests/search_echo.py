"""A trivial search objective for tests/test_search.py, in its own light module so that spawned worker processes,
which import it to unpickle the objective, do not import the heavy test fixtures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import optuna

from slim.harness.search.spec import SearchSpec

RACE_WORKERS = 3


def record_evaluation(trial: optuna.Trial, spec: SearchSpec) -> float:
    """No training: one file per evaluation, named by trial and pid. Workers evaluate in lockstep (each waits, a
    minute at most, until every worker has begun as many evaluations), so that their pops meet at the storage."""
    out, pid = Path(spec.output_dir), os.getpid()
    step = len(list(out.glob(f"evaluated-*-{pid}.json")))
    (out / f"begun-{step}-{pid}").touch()
    deadline = time.monotonic() + 60
    while len(list(out.glob(f"begun-{step}-*"))) < RACE_WORKERS and time.monotonic() < deadline:
        time.sleep(0.01)
    params = {param.key: param.suggest(trial) for param in spec.space}
    (out / f"evaluated-{trial.number:03d}-{pid}.json").write_text(json.dumps(params))
    return float(params["x"])


def search_in_lockstep(spec: SearchSpec) -> None:
    """What `slim search` does up to its export, for a spec of this module's objective: open (or create) the study,
    then claim and run trials until its budget is used."""
    from slim.harness.search.study import create_study, run_worker

    create_study(spec)
    run_worker(spec, record_evaluation)
