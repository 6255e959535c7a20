"""Run a search spec as one Optuna study: N worker processes share its storage (SQLite by default, any RDB URL on a
cluster), each trial is `slim run` with a pruning callback, and the best trial is exported as a recipe."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.exc import SQLAlchemyError

from harness.atomic import write_text_atomic
from harness.config.load import load_config, to_yaml
from harness.config.schema import SlimConfig
from harness.errors import UserError
from harness.grid.expand import format_override
from harness.pipeline import run_recipe
from harness.search.pruning import StepPruning
from harness.search.spec import PrunerSpec, SearchSpec, check_spec

RECIPE_FILE = "best_recipe.yaml"
SUMMARY_FILE = "search_summary.json"


def build_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.lower, upper=spec.upper, n_warmup_steps=spec.n_warmup_steps)
    return optuna.pruners.NopPruner()


def open_storage(spec: SearchSpec) -> optuna.storages.RDBStorage:
    """The study's RDB storage; SQLite waits up to a minute for a lock, as parallel workers write to one file."""
    url = spec.storage_url()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except (SQLAlchemyError, ValueError, ImportError) as err:
        raise UserError(f"{spec.path}: storage: cannot open {url!r}: {str(err).splitlines()[0]}") from None


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
    summary = run_recipe(trial_config(spec, params, out_dir, f"trial-{trial.number}"),
                         callbacks=[StepPruning(trial, monitor=spec.pruner.monitor)])
    return float(summary["distill"][spec.metric])


def run_worker(spec: SearchSpec, index: int, n_trials: int) -> None:
    """Run `n_trials` trials of the study; worker `index` samples with seed `spec.seed + index`."""
    study = optuna.load_study(study_name=spec.name, storage=open_storage(spec), pruner=build_pruner(spec.pruner),
                              sampler=optuna.samplers.TPESampler(seed=spec.seed + index))
    # a trial whose sampled config is refused or diverges (NaN loss) fails; the search goes on
    study.optimize(lambda trial: objective(trial, spec), n_trials=n_trials, catch=(UserError,))


def create_study(spec: SearchSpec) -> optuna.Study:
    """Create the study (or reopen it on a rerun) and queue the spec's `enqueue` trials when it is new."""
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=spec.name, storage=open_storage(spec), load_if_exists=True,
                                direction=spec.direction)
    if study.direction.name.lower() != spec.direction:
        raise UserError(f"{spec.path}: objective.direction: study {spec.name!r} in {spec.storage_url()} was created "
                        f"to {study.direction.name.lower()}; use another name or storage")
    if not study.trials:
        for params in spec.enqueue:
            study.enqueue_trial(params)
    return study


def worker_shares(remaining: int, workers: int) -> list[int]:
    """`remaining` trials split as evenly as possible over at most `workers` workers."""
    return [share for i in range(workers) if (share := remaining // workers + (i < remaining % workers))]


def run_workers(spec: SearchSpec, shares: list[int]) -> None:
    """One share in this process; several as spawned processes on the shared storage."""
    if len(shares) == 1:
        run_worker(spec, 0, shares[0])
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(spec, index, share), name=f"search-worker-{index}")
                 for index, share in enumerate(shares)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [f"{p.name} (exit {p.exitcode})" for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(f"search {spec.name!r}: {', '.join(failed)} failed; see their output above")


def export_best(spec: SearchSpec, study: optuna.Study) -> Path:
    """Write `<output_dir>/best_recipe.yaml`: the best trial's full config, loadable by `slim run`, writing to
    `<output_dir>/best` (atomically: a reader never sees half a recipe)."""
    if not any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials):
        raise UserError(f"search {spec.name!r}: no trial completed, so there is no best recipe; see {spec.output_dir}")
    best = study.best_trial
    cfg = trial_config(spec, best.params, Path(spec.output_dir).resolve() / "best", "best")
    header = (f"# best of search {spec.name!r} ({spec.path}): trial {best.number}, {spec.metric} = {best.value:.6g}\n"
              f"# params: {json.dumps(best.params)}\n")
    return write_text_atomic(Path(spec.output_dir) / RECIPE_FILE, header + to_yaml(cfg))


def summarize(spec: SearchSpec, study: optuna.Study, recipe: Path) -> dict[str, Any]:
    """Trial counts by state (complete, pruned, fail), the best trial and where its recipe is."""
    states = [trial.state.name.lower() for trial in study.trials]
    best = study.best_trial
    return {"study": spec.name, "storage": spec.storage_url(),
            "trials": {state: states.count(state) for state in sorted(set(states))},
            "best": {"number": best.number, "value": best.value, "params": best.params}, "recipe": str(recipe)}


def run_search(spec: SearchSpec, workers: int = 1) -> dict[str, Any]:
    """Check the spec, run the study to `n_trials` finished trials over `workers` processes (a rerun continues
    it), export the best recipe and write `<output_dir>/search_summary.json`."""
    if workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    check_spec(spec)
    study = create_study(spec)
    finished = sum(trial.state.is_finished() for trial in study.trials)
    shares = worker_shares(max(spec.n_trials - finished, 0), workers)
    if shares:
        run_workers(spec, shares)
    recipe = export_best(spec, study)
    summary = summarize(spec, study, recipe)
    (Path(spec.output_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
