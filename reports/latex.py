"""Booktabs LaTeX for a TableSpec: teacher row on top, seeds as mean ± std, best student value per column bold."""

from __future__ import annotations

from reports.aggregate import Row, Stat, average_of, best_rows, build_rows
from reports.results import CellResult
from reports.spec import TableSpec

MISSING = "--"
_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_PREAMBLE = "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{lmodern}\n\\usepackage{booktabs}\n"


def escape(text: str) -> str:
    """`text` as LaTeX prints it literally (labels are registry keys and axis values, not markup)."""
    return "".join(_ESCAPES.get(char, char) for char in text)


def format_stat(stat: Stat | None, fmt: str, bold: bool) -> str:
    """`44.7\\,$\\pm$\\,1.2` for several seeds, `44.7` for one, `--` when missing; bold marks the mean."""
    if stat is None:
        return MISSING
    mean = fmt.format(stat.mean)
    mean = rf"\textbf{{{mean}}}" if bold else mean
    return mean if stat.std is None else rf"{mean}\,$\pm$\,{fmt.format(stat.std)}"


def _line(cells: list[str]) -> str:
    return " & ".join(cells) + r" \\"


def _teacher_line(spec: TableSpec) -> str:
    assert spec.teacher is not None
    label = [escape(spec.teacher_label)] + [""] * (len(spec.rows) - 1)
    values = [format_stat(_single(spec.teacher.get(column.key)), column.fmt, False) for column in spec.columns]
    if spec.average:
        values.append(format_stat(_single(average_of(spec.teacher, spec)), spec.average_fmt, False))
    return _line(label + values)


def _single(value: float | None) -> Stat | None:
    return None if value is None else Stat(value, None)


def _student_lines(rows: list[Row], spec: TableSpec) -> list[str]:
    bold = [best_rows([_stat_mean(row.cells.get(column.key)) for row in rows], column.fmt, column.higher_is_better)
            for column in spec.columns]
    average_bold = best_rows([row.average for row in rows], spec.average_fmt, spec.higher_is_better_average())
    lines = []
    for index, row in enumerate(rows):
        values = [format_stat(row.cells.get(column.key), column.fmt, index in bold[position])
                  for position, column in enumerate(spec.columns)]
        if spec.average:
            values.append(format_stat(_single(row.average), spec.average_fmt, index in average_bold))
        lines.append(_line([escape(part) for part in spec.display(row.key)] + values))
    return lines


def _stat_mean(stat: Stat | None) -> float | None:
    return None if stat is None else stat.mean


def render_table(results: list[CellResult], spec: TableSpec) -> str:
    """The `table` environment, ready for `\\input` in a paper that loads booktabs."""
    headers = [escape(header) for header in spec.headers() + [column.header for column in spec.columns]]
    if spec.average:
        headers.append("Avg.")
    body = [r"\toprule", _line(headers), r"\midrule"]
    if spec.teacher is not None:
        body += [_teacher_line(spec), r"\midrule"]
    body += _student_lines(build_rows(results, spec), spec) + [r"\bottomrule"]
    align = "l" * len(spec.rows) + "c" * (len(headers) - len(spec.rows))
    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(spec.caption)}}}", rf"\label{{{spec.label}}}",
        rf"\begin{{tabular}}{{{align}}}", *body, r"\end{tabular}", r"\end{table}", "",
    ])


def standalone(fragment: str) -> str:
    """A document pdflatex compiles on its own around a rendered table (fonts: Latin Modern, T1)."""
    return f"{_PREAMBLE}\\begin{{document}}\n{fragment}\\end{{document}}\n"
