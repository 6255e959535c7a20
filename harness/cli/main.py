"""`slim` command line: a plain mapping from subcommand to function (litgpt style).

Every subcommand takes `key=value` overrides (`model=tiny`, `train.max_steps=100`) and
`--config FILE` YAML files; bad input is reported as one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from harness.cli import commands
from harness.errors import UserError

SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare-data": commands.prepare_data,
    "pretrain": commands.pretrain,
    "calibrate": commands.calibrate,
    "compress": commands.compress,
    "run": commands.run,
    "zeda": commands.zeda,
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
    "grid": commands.grid_run_arguments,
    "report": commands.report_arguments,
    "search": commands.search_arguments,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func in SUBCOMMANDS.items():
        doc = (func.__doc__ or "").strip()
        cmd = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        if name in TAKES_NO_CONFIG:
            continue
        if name in EXTRA_ARGUMENTS:
            EXTRA_ARGUMENTS[name](cmd)
        cmd.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config file (repeatable)")
        cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe.yaml files and config overrides, e.g. train.max_steps=100")
    return parser


def main(argv: list[str] | None = None) -> int:
    # flash-linear-attention (gpu extra) warns at import on CPU-only machines; the harness routes CPU tensors
    # to the torch path by design, so the warning is noise that would break one-line error output.
    warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command](args)
    except UserError as err:
        print(f"slim {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
