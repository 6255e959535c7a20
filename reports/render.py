"""Write one report (table fragment, standalone document, loss curves) to a folder, each file atomically.

The standalone document compiles where it lies (`pdflatex <name>_standalone.tex`) even with a TeX that lacks
booktabs, such as the PyPI TinyTeX wheel: the unmodified booktabs.sty (LPPL 1.3c, its notice in its header) is
copied beside it from `reports/texmf/`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from slim.harness.atomic import atomic_path
from slim.reports.curves import CurveSpec, build_lines, plot_lines
from slim.reports.latex import render_table, standalone
from slim.reports.results import CellResult
from slim.reports.spec import TableSpec

BOOKTABS = Path(__file__).parent / "texmf" / "booktabs.sty"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same folder and rename it, so readers never see half a file."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        write(stream)


def write_report(results: list[CellResult], spec: TableSpec, out_dir: str | Path,
                 curve: CurveSpec | None = CurveSpec()) -> dict[str, Path]:
    """Write `<name>.tex`, `<name>_standalone.tex` with `booktabs.sty` beside it and, when any result has the curve,
    `<name>_curves.png/.pdf`.

    Returns the written paths keyed "tex", "standalone", "booktabs", "png", "pdf".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fragment = render_table(results, spec)
    texts = {"tex": (f"{spec.name}.tex", fragment), "standalone": (f"{spec.name}_standalone.tex", standalone(fragment))}
    paths = {}
    for kind, (filename, text) in texts.items():
        paths[kind] = out_dir / filename
        atomic_write(paths[kind], lambda stream, text=text: stream.write(text.encode()))
    paths["booktabs"] = out_dir / BOOKTABS.name
    atomic_write(paths["booktabs"], lambda stream: stream.write(BOOKTABS.read_bytes()))
    if curve is not None and (lines := build_lines(results, spec, curve)):
        figure = plot_lines(lines, curve)
        for suffix in ("png", "pdf"):
            paths[suffix] = out_dir / f"{spec.name}_curves.{suffix}"
            atomic_write(paths[suffix], lambda stream, suffix=suffix: figure.savefig(stream, format=suffix, dpi=200))
    return paths
