"""Markdown for a TableSpec: the LaTeX table's lines, values and bolding (slim.reports.table) as a GitHub table, and the
JSON a committed table is re-rendered from (`docs/results/<table>.json` beside `<table>.md`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from slim.reports.render import atomic_write
from slim.reports.results import CellResult
from slim.reports.spec import TableSpec
from slim.reports.table import Line, StatMarkup, build_table, format_stat

MISSING = "–"
MARKUP = StatMarkup(missing=MISSING, bold="**{}**", plus_minus=" ± ")
_ESCAPED = "\\|*_`"


def escape(text: str) -> str:
    """`text` as Markdown prints it literally in a table cell."""
    return "".join(f"\\{char}" if char in _ESCAPED else char for char in text)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table_line(line: Line) -> str:
    return _row([escape(label) for label in line.labels]
                + [format_stat(value.stat, value.fmt, value.bold, MARKUP) for value in line.values])


def render_markdown(results: list[CellResult], spec: TableSpec) -> str:
    """The table as GitHub Markdown: label columns left-aligned, value columns centred as in the LaTeX."""
    table = build_table(results, spec)
    lines = [_row([escape(header) for header in table.label_headers + table.value_headers]),
             _row(["---"] * len(table.label_headers) + [":---:"] * len(table.value_headers))]
    if table.teacher is not None:
        lines.append(_table_line(table.teacher))
    lines += [_table_line(line) for line in table.rows]
    return "\n".join(lines) + "\n"


def results_json(results: list[CellResult], spec: TableSpec, source: dict[str, str] | None = None) -> str:
    """The table spec and the rows it was rendered from (final metrics only), enough to render it again."""
    rows = [{key: value for key, value in asdict(result).items() if key != "curves"} for result in results]
    return json.dumps({"source": source or {}, "table": asdict(spec), "results": rows}, indent=1, sort_keys=True) + "\n"


def load_results_json(text: str) -> tuple[list[CellResult], TableSpec]:
    """The (results, spec) a `results_json` text holds."""
    data = json.loads(text)
    return [CellResult(**row) for row in data["results"]], TableSpec(**data["table"])


def write_markdown_report(results: list[CellResult], spec: TableSpec, out_dir: str | Path,
                          source: dict[str, str] | None = None) -> dict[str, Path]:
    """Write `<name>.md` and the `<name>.json` it re-renders from into `out_dir`; the paths keyed "md", "json"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"md": render_markdown(results, spec), "json": results_json(results, spec, source)}
    paths = {}
    for kind, text in texts.items():
        paths[kind] = out_dir / f"{spec.name}.{kind}"
        atomic_write(paths[kind], lambda stream, text=text: stream.write(text.encode()))
    return paths
