"""Implementations of the `slim` subcommands; each turns parsed args into one harness function call."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from slim.harness.cli.announce import announce_file, announce_model
from slim.harness.config.load import load_config, to_yaml
from slim.harness.config.schema import SlimConfig
from slim.harness.plugins import load_plugins


def _sources(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(recipe files, `key=value` overrides): positional `*.yaml` arguments and `--config` files are recipes."""
    files = [*args.config, *(item for item in args.overrides if "=" not in item and item.endswith((".yaml", ".yml")))]
    return files, [item for item in args.overrides if item not in files]


def _config(args: argparse.Namespace, methods: bool = True) -> SlimConfig:
    """Recipe files applied first, then the `key=value` overrides: checked (method names against the declared
    entries, ranges, choices) before anything heavy is imported, so a typo is one line within a second or two. Then,
    for a command that runs methods, every installed plug-in is imported, so a broken one is named before any work."""
    files, overrides = _sources(args)
    cfg = load_config(overrides, files=files)
    if methods:
        load_plugins()
    return cfg


def _say(text: str) -> None:
    """Print the result once: on rank 0 alone under torchrun or srun, whose ranks all run the command."""
    from slim.harness.distributed import rank

    if rank() == 0:
        print(text)


def pretrain(args: argparse.Namespace) -> int:
    """Pretrain the teacher on the shipped corpus; writes <run_dir>/model as a Hugging Face directory."""
    cfg = _config(args)
    from slim.harness.training.pretrain import pretrain as run_pretrain

    summary = run_pretrain(cfg)
    _say(json.dumps(asdict(summary), indent=2))
    announce_model("teacher", summary.model_dir)
    return 0


def prepare_data(args: argparse.Namespace) -> int:
    """Tokenize data.source (kjv, text, jsonl, parquet, hf_disk) at data.path with data.tokenizer into token shards
    under data.output (data.num_proc processes; a rerun writes only missing or damaged shards); later commands given
    the same overrides read them."""
    cfg = _config(args, methods=False)  # the data source's registry loads its own modules
    from slim.harness.data.prepare import prepare_data as run_prepare_data

    summary = run_prepare_data(cfg)
    print(json.dumps(asdict(summary), indent=2))
    return 0


def calibrate(args: argparse.Namespace) -> int:
    """One calibration pass over the teacher (compress.teacher); writes calibration.output (safetensors)."""
    cfg = _config(args)
    from slim.harness.calibration.run import calibrate_teacher

    stats = calibrate_teacher(cfg)
    _say(f"wrote {cfg.calibration.output} (fingerprint {stats.fingerprint[:12]}, {len(stats.moe)} MoE layers)")
    return 0


def compress(args: argparse.Namespace) -> int:
    """Compress the teacher by a recipe (`slim compress recipe.yaml`); writes a student HF dir, its report and the
    compression figures (PNG + PDF) beside it."""
    cfg = _config(args)
    from slim.harness.compression.compress import compress as run_compress
    from slim.harness.compression.figures import write_figures
    from slim.harness.distributed import rank
    from slim.harness.models.params import format_count

    report = run_compress(cfg)
    if rank() == 0:  # after the student is written, so a plotting failure cannot cost it
        write_figures(report, cfg.compress.output)
    before, after = report["params"]["teacher"], report["params"]["student"]
    _say(f"teacher {format_count(before['total'])} total / {format_count(before['active'])} active -> "
         f"student {format_count(after['total'])} total / {format_count(after['active'])} active")
    announce_model("student", cfg.compress.output)
    return 0


def distill(args: argparse.Namespace) -> int:
    """Distill the student (distill.student) from the frozen teacher (distill.teacher); writes distill.output."""
    cfg = _config(args)
    from slim.harness.training.distill import SUMMARY_NAME
    from slim.harness.training.distill import distill as run_distill

    summary = run_distill(cfg)
    _say(json.dumps(asdict(summary), indent=2))
    announce_model("distilled student", summary.output_dir)
    announce_file("summary", Path(cfg.run_dir) / f"{SUMMARY_NAME}.json")
    return 0


def cache_teacher(args: argparse.Namespace) -> int:
    """Write the teacher's top-k log-probs over the train split to distill.teacher_cache (k =
    distill.teacher_cache_top_k; resumes a partial cache); `slim distill` then reads its kd targets from there."""
    cfg = _config(args)
    from slim.harness.training.teacher_cache_writer import cache_teacher as run_cache_teacher

    summary = run_cache_teacher(cfg)
    _say(json.dumps(asdict(summary), indent=2))
    announce_file("teacher cache", cfg.distill.teacher_cache)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate eval.model (lm-eval tasks, perplexity, MTP acceptance, speed/memory vs eval.teacher); writes
    <run_dir>/eval_summary.json."""
    cfg = _config(args)
    from slim.harness.evaluation.evaluate import SUMMARY_NAME
    from slim.harness.evaluation.evaluate import evaluate as run_evaluate

    summary = run_evaluate(cfg)
    _say(json.dumps(summary, indent=2))
    announce_file("summary", Path(cfg.run_dir) / SUMMARY_NAME)
    return 0


def params(args: argparse.Namespace) -> int:
    """Build the configured model on the meta device and report total / active parameters."""
    cfg = _config(args)
    from slim.harness.models.build import build_model, validate_model_config
    from slim.harness.models.params import count_parameters, format_count

    validate_model_config(cfg.model)
    count = count_parameters(build_model(cfg.model, device="meta"))
    print(f"total {format_count(count.total)}  active {format_count(count.active)}")
    print(json.dumps(asdict(count), indent=2))
    return 0


PLAN_DOES_NOT_FIT = 3  # `slim plan`'s exit status when the run does not fit (a script can test it)


def plan(args: argparse.Namespace) -> int:
    """Per-GPU memory of distilling the `compress` recipe's student from `model` on plan.nodes x plan.gpus GPUs of
    plan.gpu_memory_gib GiB (parameters, gradients, optimizer, frozen teacher, activations), whether it fits
    (exit status 3 when it does not), and the time the token budget takes at a measured real-width step's rate."""
    cfg = _config(args)
    from slim.harness.planning import format_plan, plan_run
    from slim.harness.time_to_train import time_to_train_line

    memory = plan_run(cfg)
    print(format_plan(memory, cfg.plan, notes=(time_to_train_line(cfg),)))
    return 0 if memory.fits else PLAN_DOES_NOT_FIT


def show_config(args: argparse.Namespace) -> int:
    """Print the fully resolved config (defaults, presets, files and overrides applied)."""
    print(to_yaml(_config(args, methods=False)), end="")
    return 0


def methods_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", action="store_true",
                        help="also each entry's one-line doc (imports the methods: seconds, not milliseconds)")


def methods(args: argparse.Namespace) -> int:
    """List every installed method key by family (criteria, similarities, reducers, selectors, losses, families,
    ...): the built-in ones and those of installed plug-in packages."""
    from slim.harness.methods_catalog import format_catalog

    print(format_catalog(docs=args.docs))
    return 0


def run(args: argparse.Namespace) -> int:
    """Calibrate, compress, distill and save in one command (`slim run recipe.yaml`; distill.init=scratch for
    the random-init baseline)."""
    cfg = _config(args)
    from slim.harness.pipeline import run_recipe

    summary = run_recipe(cfg)
    _say(json.dumps(summary["distill"], indent=2))
    announce_model("distilled student", summary["distill"]["output_dir"])
    return 0


def adapt(args: argparse.Namespace) -> int:
    """Run an MoE adaptation by name (`slim adapt zeda zeda.teacher=... run_dir=...`; `slim methods` lists them):
    it turns the model into another kind of MoE and trains it there; prints the adapted model and its metrics."""
    from slim.harness.adaptations import adaptations

    adaptations.check_declared(args.adaptation, "NAME")  # a typo answers before anything is imported
    cfg = _config(args)
    adaptation = adaptations.get(args.adaptation)
    summary = adaptation.run(cfg)
    _say(json.dumps({key: summary[key] for key in ("output_dir", *adaptation.metrics) if key in summary}, indent=2))
    return 0


def adapt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adaptation", metavar="NAME", help="the adaptation to run, e.g. zeda (see `slim methods`)")


def grid_arguments(parser: argparse.ArgumentParser) -> None:
    """`slim grid` / `slim report`: the spec file and where its results live."""
    parser.add_argument("spec", metavar="SPEC", help="grid spec YAML, e.g. ablations/table3.yaml")
    parser.add_argument("--output-dir", default=None, help="grid folder (default: the spec's output_dir)")


def grid_run_arguments(parser: argparse.ArgumentParser) -> None:
    grid_arguments(parser)
    parser.add_argument("--launcher", default="inprocess",
                        help="inprocess (default) or submitit (a Slurm job per cell)")
    parser.add_argument("--workers", type=int, default=1, help="in-process: cells run at once in worker processes")
    parser.add_argument("--cluster", default=None, help="submitit executor: slurm or local (default: auto-detect)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the spec and every cell, list the cells (key, kind, status, overrides), run none")


def _grid(args: argparse.Namespace, recorded: bool = False):
    """The grid of the command line's spec, recipe files and overrides; with `recorded` and none of them given, those
    the last `slim grid` of the spec on the output folder ran with (harness/grid/invocation.py)."""
    from slim.harness.grid import prepare_grid
    from slim.harness.grid.invocation import recorded_args

    load_plugins()  # every cell's methods: a broken plug-in is named before any cell runs
    files, overrides = _sources(args)
    if recorded and not files and not overrides and (last := recorded_args(args.spec, args.output_dir)):
        files, overrides = last
        if files or overrides:
            print(f"as the last `slim grid` here ran: {' '.join([*files, *overrides])}")
    return prepare_grid(args.spec, files or None, overrides, args.output_dir)


def grid(args: argparse.Namespace) -> int:
    """Run an ablation grid (`slim grid ablations/table3.yaml [recipe.yaml] [key=value]`): recipe files replace the
    spec's tiny `scale`, overrides apply to every cell; finished cells are skipped, failed ones recorded."""
    from slim.harness.grid import run_grid
    from slim.harness.grid.grid import dry_run_lines
    from slim.harness.grid.runner import cell_log

    prepared = _grid(args)
    if args.dry_run:
        print("\n".join(dry_run_lines(prepared)))
        return 0
    if note := prepared.stale_note():
        print(note)
    rows = run_grid(prepared, args.launcher, args.workers, args.cluster)
    counts = {status: sum(row["status"] == status for row in rows) for status in ("done", "failed", "running")}
    print(f"{prepared.spec.name}: {counts['done']}/{len(prepared.cells)} cells done, {counts['failed']} failed "
          f"({prepared.store_path})")
    logs = {cell.key: cell_log(cell) for cell in prepared.cells}
    for row in rows:
        if row["status"] == "failed":
            log = f" (log: {logs[row['key']]})" if logs[row["key"]].is_file() else ""
            print(f"  failed {row['key']} {row['axes']} seed={row['seed']}: {row['error']}{log}")
    return 0 if counts["done"] == len(prepared.cells) else 1


def report_arguments(parser: argparse.ArgumentParser) -> None:
    grid_arguments(parser)
    parser.add_argument("--format", choices=("latex", "markdown"), default="latex",
                        help="latex: <name>.tex + loss curves; markdown: <name>.md + the <name>.json it is rendered "
                             "from (e.g. --out docs/results for the README)")
    parser.add_argument("--out", default=None, metavar="DIR", help="report folder (default: <grid folder>/report)")


def report(args: argparse.Namespace) -> int:
    """Render a grid's table (LaTeX, or Markdown with its rows as JSON) and loss curves from its results store, and
    the compression figures beside each finished cell's student. Without recipe files or overrides it takes those the
    last `slim grid` of the spec on the folder ran with."""
    from slim.harness.grid.figures import write_cell_figures
    from slim.harness.grid.report import no_curve_note, write_grid_markdown, write_grid_report

    prepared = _grid(args, recorded=True)
    for note in (prepared.stale_note(), prepared.software_note()):
        if note:
            print(note)
    if args.format == "markdown":
        paths = write_grid_markdown(prepared, args.out)
    else:
        paths = write_grid_report(prepared, args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if args.format == "latex" and (note := no_curve_note(prepared, paths)):
        print(f"slim report: warning: {note}", file=sys.stderr)
    if students := write_cell_figures(prepared.rows()):
        print(f"compression figures: {len(students)} students (beside their compression_report.json)")
    return 0


def search_arguments(parser: argparse.ArgumentParser) -> None:
    """`slim search`: the spec file and how many worker processes share the study."""
    parser.add_argument("spec", metavar="SPEC", help="search spec YAML, e.g. conf/search/tiny.yaml")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on the study's storage")
    parser.add_argument("--n-trials", type=int, default=None, metavar="N",
                        help="trials the study runs, all processes on its output dir together (default: the "
                             "spec's n_trials)")


def search(args: argparse.Namespace) -> int:
    """Run an Optuna search (`slim search conf/search/tiny.yaml [recipe.yaml] [key=value] [--workers N]
    [--n-trials N]`): recipe files replace the spec's `scale`, overrides apply to every trial; writes
    <output_dir>/best_recipe.yaml."""
    from slim.harness.search.spec import parse_spec
    from slim.harness.search.study import run_search

    load_plugins()  # every trial's methods: a broken plug-in is named before any trial runs
    files, overrides = _sources(args)
    print(json.dumps(run_search(parse_spec(args.spec, files, overrides, args.n_trials), args.workers), indent=2))
    return 0
