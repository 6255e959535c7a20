"""Booktabs LaTeX for a TableSpec: teacher row on top, seeds as mean ± std, best student value per column bold."""

from __future__ import annotations

from slim.reports.results import CellResult
from slim.reports.spec import TableSpec
from slim.reports.table import Line, StatMarkup, build_table, format_stat

MISSING = "--"
MARKUP = StatMarkup(missing=MISSING, bold=r"\textbf{{{}}}", plus_minus=r"\,$\pm$\,")
_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_PREAMBLE = "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{lmodern}\n\\usepackage{booktabs}\n"


def escape(text: str) -> str:
    """`text` as LaTeX prints it literally (labels are registry keys and axis values, not markup)."""
    return "".join(_ESCAPES.get(char, char) for char in text)


def _line(cells: list[str]) -> str:
    return " & ".join(cells) + r" \\"


def _table_line(line: Line) -> str:
    return _line([escape(label) for label in line.labels]
                 + [format_stat(value.stat, value.fmt, value.bold, MARKUP) for value in line.values])


def render_table(results: list[CellResult], spec: TableSpec) -> str:
    """The `table` environment, ready for `\\input` in a paper that loads booktabs."""
    table = build_table(results, spec)
    headers = [escape(header) for header in table.label_headers + table.value_headers]
    body = [r"\toprule", _line(headers), r"\midrule"]
    if table.teacher is not None:
        body += [_table_line(table.teacher), r"\midrule"]
    body += [_table_line(line) for line in table.rows] + [r"\bottomrule"]
    align = "l" * len(table.label_headers) + "c" * len(table.value_headers)
    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(spec.caption)}}}", rf"\label{{{spec.label}}}",
        rf"\begin{{tabular}}{{{align}}}", *body, r"\end{tabular}", r"\end{table}", "",
    ])


def standalone(fragment: str) -> str:
    """A document pdflatex compiles on its own around a rendered table (fonts: Latin Modern, T1)."""
    return f"{_PREAMBLE}\\begin{{document}}\n{fragment}\\end{{document}}\n"
