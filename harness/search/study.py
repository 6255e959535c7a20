"""Run a search spec as one Optuna study: N worker processes share its storage (a journal file by default, an RDB
URL on a cluster), each trial is `slim run` with a pruning callback, and the best trial is exported as a recipe.

Only the parent enqueues. Workers claim trials under a lock until the budget is used (claims.py), popping queued
trials first; the journal file appends under a file lock and the first
RUNNING record wins, so one queued trial goes to one worker. SQLite cannot lock rows: two workers can pop the same
trial and one then fails with "Cannot tell a COMPLETE trial" (Optuna issues #4002, #4621).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.exc import SQLAlchemyError

from slim.harness.atomic import write_text_atomic
from slim.harness.config.load import load_config
from slim.harness.config.schema import SlimConfig
from slim.harness.errors import UserError
from slim.harness.grid.expand import format_override
from slim.harness.pipeline import run_recipe
from slim.harness.plugins import load_plugins
from slim.harness.provenance import stamped
from slim.harness.search.claims import budget_used, claim, run_claimed
from slim.harness.search.pruning import StepPruning
from slim.harness.search.spec import PrunerSpec, SearchSpec, check_spec
from slim.harness.verbosity import configure_output, redirect_output, verbose_requested

RECIPE_FILE = "best_recipe.yaml"
WORKER_LOG = "worker-{index}.log"  # a spawned worker's stdout and stderr, in the output dir
SUMMARY_FILE = "search_summary.json"
ENQUEUED = "enqueued"  # user attr of a queued trial: its spec `enqueue` entry as canonical JSON
WORKER_ATTR = "worker:"  # study user attrs worker:<uuid> = host, one per worker that joined, in joining order
Objective = Callable[[optuna.Trial, SearchSpec], float]

logger = logging.getLogger(__name__)


def build_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.lower, upper=spec.upper, n_warmup_steps=spec.n_warmup_steps)
    return optuna.pruners.NopPruner()


def open_storage(spec: SearchSpec) -> optuna.storages.BaseStorage:
    """The study's journal file (Optuna's file backend with its lock file beside it) or the RDB URL the spec names;
    SQLite waits up to a minute for a lock."""
    location = spec.storage_location()
    try:
        if "://" not in location:
            return JournalStorage(JournalFileBackend(location))
        engine = {"connect_args": {"timeout": 60}} if location.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(location, engine_kwargs=engine)
    except (SQLAlchemyError, ValueError, ImportError, OSError) as err:
        raise UserError(f"{spec.path}: storage: cannot open {location!r}: {str(err).splitlines()[0]}") from None


def trial_config(spec: SearchSpec, params: dict[str, Any], out_dir: Path, run_name: str) -> SlimConfig:
    """The spec's recipe with `params` applied, writing under `out_dir` and tracked in the study's W&B group."""
    places = {"run_dir": out_dir, "compress.output": out_dir / "student", "distill.output": out_dir / "distilled",
              "tracking.group": spec.name, "tracking.name": run_name}
    items = [*spec.overrides, *(format_override(k, v) for k, v in params.items()),
             *(format_override(k, str(v)) for k, v in places.items())]
    return load_config(items, files=list(spec.files))


def objective(trial: optuna.Trial, spec: SearchSpec) -> float:
    """One `slim run` of the trial's config; the pruning callback may stop it at any validation."""
    params = {param.key: param.suggest(trial) for param in spec.space}
    out_dir = Path(spec.output_dir).resolve() / "trials" / f"{trial.number:04d}"
    pruning = [StepPruning(trial, monitor=spec.pruner.monitor)] if spec.pruner.kind != "none" else []
    summary = run_recipe(trial_config(spec, params, out_dir, f"trial-{trial.number}"), callbacks=pruning)
    return float(summary["distill"][spec.metric])


def worker_seed(study: optuna.Study, seed: int) -> int:
    """`seed` plus this process's place among every worker that ever joined the study. The place is assigned by the
    storage: each worker appends a user attribute and reads back where it landed, so no two processes (spawned
    workers, or `slim search` started on several machines at once) sample with one seed and repeat each other."""
    key = f"{WORKER_ATTR}{uuid.uuid4().hex}"
    study.set_user_attr(key, socket.gethostname())
    return seed + [name for name in study.user_attrs if name.startswith(WORKER_ATTR)].index(key)


def run_worker(spec: SearchSpec, evaluate: Objective = objective) -> None:
    """Claim and run trials of the study (queued ones first, never queueing any) until `n_trials` count toward its
    budget (slim.harness.search.claims), sampling with the seed the storage assigns this process (worker_seed)."""
    configure_output()  # a spawned worker keeps the search command's --verbose choice
    follow_quiet_mode()
    load_plugins()  # the installed plug-ins, as in the search command's process
    storage = open_storage(spec)
    seed = worker_seed(optuna.load_study(study_name=spec.name, storage=storage), spec.seed)
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=build_pruner(spec.pruner),
                              sampler=optuna.samplers.TPESampler(seed=seed))
    while (trial := claim(study, spec.n_trials, spec.output_dir)) is not None:
        run_claimed(study, trial, lambda claimed: evaluate(claimed, spec))


def check_storage(spec: SearchSpec, workers: int) -> None:
    """Refuse to start a journal study beside `study.db`, the SQLite default of older harnesses (a rerun would
    silently begin again instead of continuing it); warn when several workers share a SQLite file."""
    old = Path(spec.output_dir) / "study.db"
    if not spec.storage and old.exists() and not Path(spec.storage_location()).exists():
        raise UserError(f"{spec.path}: storage: {old} holds this search's study from an older harness (SQLite "
                        f"default); set storage: sqlite:///{old.resolve()} to continue it (one worker) or remove it")
    if workers > 1 and spec.storage_location().startswith("sqlite"):
        logger.warning("%s: storage: SQLite can hand one queued trial to two of the %d workers (Optuna issues #4002, "
                       "#4621); leave storage empty for the journal file", spec.path, workers)


def enqueue_missing(study: optuna.Study, spec: SearchSpec) -> None:
    """Queue each `enqueue` entry of the spec that the study does not hold yet, so a rerun (even one after a kill
    between two entries) queues none twice; an entry listed twice is queued twice."""
    held = Counter(trial.user_attrs.get(ENQUEUED) for trial in study.get_trials(deepcopy=False))
    for params in spec.enqueue:
        key = json.dumps(params, sort_keys=True)
        if held[key]:
            held[key] -= 1
        else:
            study.enqueue_trial(params, user_attrs={ENQUEUED: key})


def follow_quiet_mode() -> None:
    """Optuna's INFO lines (study created, each trial finished) only under --verbose: Optuna sets its own level when
    it is first imported, after the CLI chose quiet output."""
    if not verbose_requested():
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_study(spec: SearchSpec) -> optuna.Study:
    """Create the study (or reopen it on a rerun) and queue the spec's `enqueue` trials it does not hold yet."""
    follow_quiet_mode()
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=spec.name, storage=open_storage(spec), load_if_exists=True,
                                direction=spec.direction)
    if study.direction.name.lower() != spec.direction:
        raise UserError(f"{spec.path}: objective.direction: study {spec.name!r} in {spec.storage_location()} was "
                        f"created to {study.direction.name.lower()}; use another name or storage")
    enqueue_missing(study, spec)
    return study


def worker_log(spec: SearchSpec, index: int) -> Path:
    return Path(spec.output_dir) / WORKER_LOG.format(index=index)


def _spawned_worker(spec: SearchSpec, index: int, evaluate: Objective) -> None:
    """A spawned worker: its output in its log file (two workers' progress bars would interleave), then its trials."""
    redirect_output(worker_log(spec, index))
    run_worker(spec, evaluate)


def run_workers(spec: SearchSpec, workers: int, evaluate: Objective = objective) -> None:
    """Claim trials in this process, or in `workers` spawned processes on the shared storage, each writing its output
    to `<output_dir>/worker-<i>.log` (`evaluate` must then be a module-level function, so that they can import it)."""
    if workers == 1:
        run_worker(spec, evaluate)
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_spawned_worker, args=(spec, index, evaluate), name=f"search-worker-{index}")
                 for index in range(workers)]
    print(f"search {spec.name!r}: {workers} workers, output in {worker_log(spec, 0).with_name('worker-*.log')}",
          file=sys.stderr)
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [f"{p.name} (exit {p.exitcode})" for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(f"search {spec.name!r}: {', '.join(failed)} failed; see {worker_log(spec, 0).parent}/"
                           f"worker-*.log")


def export_best(spec: SearchSpec, study: optuna.Study) -> Path:
    """Write `<output_dir>/best_recipe.yaml`: the best trial's full config, loadable by `slim run`, writing to
    `<output_dir>/best` (atomically: a reader never sees half a recipe)."""
    if not any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials):
        raise UserError(f"search {spec.name!r}: no trial completed, so there is no best recipe; see {spec.output_dir}")
    best = study.best_trial
    cfg = trial_config(spec, best.params, Path(spec.output_dir).resolve() / "best", "best")
    header = (f"# best of search {spec.name!r} ({spec.path}): trial {best.number}, {spec.metric} = {best.value:.6g}\n"
              f"# params: {json.dumps(best.params)}\n")
    recipe = OmegaConf.to_container(OmegaConf.structured(cfg))
    # trials cut compress.teacher, whose config.json is the model: a `model:` block (the schema's, or a preset's for
    # pretraining) is not the teacher searched on and would mislead a reader of the recipe
    del recipe["model"]
    return write_text_atomic(Path(spec.output_dir) / RECIPE_FILE, header + OmegaConf.to_yaml(recipe))


def summarize(spec: SearchSpec, study: optuna.Study, recipe: Path) -> dict[str, Any]:
    """Trial counts by state (complete, pruned, fail), the best trial and where its recipe is."""
    states = [trial.state.name.lower() for trial in study.trials]
    best = study.best_trial
    return {"study": spec.name, "storage": spec.storage_location(),
            "trials": {state: states.count(state) for state in sorted(set(states))},
            "best": {"number": best.number, "value": best.value, "params": best.params}, "recipe": str(recipe)}


def run_search(spec: SearchSpec, workers: int = 1, evaluate: Objective = objective) -> dict[str, Any]:
    """Check the spec, run the study until `n_trials` trials count toward its budget, over `workers` processes and
    any other process on the same output dir (a rerun continues it), export the best recipe and write
    `<output_dir>/search_summary.json`."""
    if workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    check_spec(spec)
    check_storage(spec, workers)
    study = create_study(spec)
    remaining = spec.n_trials - budget_used(study)
    if remaining > 0:
        run_workers(spec, min(workers, remaining), evaluate)
    recipe = export_best(spec, study)
    summary = summarize(spec, study, recipe)
    (Path(spec.output_dir) / SUMMARY_FILE).write_text(json.dumps(stamped(summary), indent=2))
    return summary
