"""What a command made and how to use it: each output path on one line, and for a model directory the two lines of
plain transformers that load it (with `trust_remote_code=True` where the directory ships its own modeling code, as a
portable student does: slim.harness.models.portable)."""

from __future__ import annotations

import json
from pathlib import Path

from slim.harness.verbosity import note


def load_lines(model_dir: str | Path) -> list[str]:
    """The Python that loads `model_dir` in plain transformers, model and tokenizer."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    flag = ", trust_remote_code=True" if "auto_map" in config else ""
    return [f'AutoModelForCausalLM.from_pretrained("{model_dir}"{flag})',
            f'AutoTokenizer.from_pretrained("{model_dir}"{flag})']


def announce_model(what: str, model_dir: str | Path) -> None:
    """`<what>: <dir>` and its load lines, on stderr (stdout stays the command's result), by rank 0 alone: it wrote
    the directory, and another rank may finish before the files are there."""
    from slim.harness.distributed import rank

    if rank() == 0:
        note("\n".join([f"{what}: {model_dir}", *(f"  {line}" for line in load_lines(model_dir))]))


def announce_file(what: str, path: str | Path) -> None:
    note(f"{what}: {path}")
