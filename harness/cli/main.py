"""`slim` command line: a plain mapping from subcommand to function (litgpt style).

Every subcommand takes `key=value` overrides (`model=tiny`, `train.max_steps=100`) and
`--config FILE` YAML files; bad input is reported as one line and exit status 2. Output is quiet by default
(harness/verbosity.py); `--verbose` shows the libraries' notices and deprecation warnings too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from slim.harness.cli import commands
from slim.harness.errors import INTERRUPTED_EXIT, REQUEUE_EXIT, Interrupted, Preempted, UserError
from slim.harness.orphans import die_with_launcher
from slim.harness.verbosity import configure_output

SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare-data": commands.prepare_data,
    "pretrain": commands.pretrain,
    "calibrate": commands.calibrate,
    "compress": commands.compress,
    "run": commands.run,
    "adapt": commands.adapt,
    "distill": commands.distill,
    "cache-teacher": commands.cache_teacher,
    "eval": commands.evaluate,
    "params": commands.params,
    "plan": commands.plan,
    "config": commands.show_config,
    "methods": commands.methods,
    "grid": commands.grid,
    "report": commands.report,
    "search": commands.search,
}
TAKES_NO_CONFIG = {"methods"}
# Arguments a subcommand takes before its recipe files and overrides.
EXTRA_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "adapt": commands.adapt_arguments,
    "grid": commands.grid_run_arguments,
    "report": commands.report_arguments,
    "search": commands.search_arguments,
    "methods": commands.methods_arguments,
}


VERBOSE_HELP = "also show the libraries' notices, progress bars and deprecation warnings (Lightning, transformers, ...)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slim", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func in SUBCOMMANDS.items():
        doc = (func.__doc__ or "").strip()
        cmd = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        # `slim run --verbose ...` as well as `slim --verbose run ...`
        cmd.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        if name in EXTRA_ARGUMENTS:
            EXTRA_ARGUMENTS[name](cmd)
        if name in TAKES_NO_CONFIG:
            continue
        cmd.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config file (repeatable)")
        cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                         help="recipe.yaml files and config overrides, e.g. train.max_steps=100")
    return parser


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()  # under torchrun: a killed launcher leaves no worker behind
    args = build_parser().parse_args(argv)
    configure_output(args.verbose)  # before the subcommand imports any library
    try:
        return SUBCOMMANDS[args.command](args)
    except UserError as err:
        print(f"slim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"slim {args.command}: {stop}", file=sys.stderr)
        return REQUEUE_EXIT
    except Interrupted as stop:
        print(f"slim {args.command}: {stop}", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
