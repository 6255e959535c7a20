"""What `slim grid` ran with: its recipe files and `key=value` overrides, kept in the grid's output folder
(`<spec name>.grid-args.json`), so that `slim report SPEC` on that folder finds the same cells without the overrides
typed again (they are part of every cell's key)."""

from __future__ import annotations

import json
from pathlib import Path

from slim.harness.atomic import write_text_atomic
from slim.harness.errors import UserError
from slim.harness.grid.spec import load_spec


def args_file(output_dir: str | Path, spec_name: str) -> Path:
    return Path(output_dir) / f"{spec_name}.grid-args.json"


def record_args(output_dir: str | Path, spec_name: str, files: list[str], overrides: list[str]) -> Path:
    """Write what this `slim grid` runs with, under the folder's grid lock (the last grid run on a folder wins)."""
    return write_text_atomic(args_file(output_dir, spec_name),
                             json.dumps({"files": list(files), "overrides": list(overrides)}, indent=2) + "\n")


def recorded_args(spec_path: str | Path, output_dir: str | None) -> tuple[list[str], list[str]] | None:
    """(recipe files, overrides) of the last `slim grid` of this spec on `output_dir` (default: the spec's), or None
    when none was recorded there."""
    spec = load_spec(spec_path)
    path = args_file(Path(output_dir or spec.output_dir).resolve(), spec.name)
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
        return [str(item) for item in recorded["files"]], [str(item) for item in recorded["overrides"]]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: damaged ({type(err).__name__}); pass the grid's recipe files and overrides to "
                        f"`slim report` or rerun `slim grid`") from None
