"""The table every renderer prints (LaTeX, Markdown): headers, the teacher line, the student lines in paper order,
each value a Stat with its format and whether it is the column's best. Renderers only escape and format."""

from __future__ import annotations

from dataclasses import dataclass

from slim.reports.aggregate import Row, Stat, average_of, best_rows, build_rows
from slim.reports.results import CellResult
from slim.reports.spec import TableSpec

AVERAGE_HEADER = "Avg."


@dataclass(frozen=True)
class Value:
    """One printed cell: None when missing; `bold` marks the best student value of its column."""

    stat: Stat | None
    fmt: str
    bold: bool = False


@dataclass(frozen=True)
class Line:
    """One table line: the shown text of its row-label parts, then its values."""

    labels: list[str]
    values: list[Value]


@dataclass(frozen=True)
class Table:
    """Headers of the label columns and the value columns, the teacher line (if any) and the student lines."""

    label_headers: list[str]
    value_headers: list[str]
    teacher: Line | None
    rows: list[Line]


def _single(value: float | None) -> Stat | None:
    return None if value is None else Stat(value, None)


def _mean(stat: Stat | None) -> float | None:
    return None if stat is None else stat.mean


def _teacher_line(spec: TableSpec) -> Line:
    assert spec.teacher is not None
    values = [Value(_single(spec.teacher.get(column.key)), column.fmt) for column in spec.columns]
    if spec.average:
        values.append(Value(_single(average_of(spec.teacher, spec)), spec.average_fmt))
    return Line([spec.teacher_label] + [""] * (len(spec.rows) - 1), values)


def _student_lines(rows: list[Row], spec: TableSpec) -> list[Line]:
    bold = [best_rows([_mean(row.cells.get(column.key)) for row in rows], column.fmt, column.higher_is_better)
            for column in spec.columns]
    average_bold = best_rows([row.average for row in rows], spec.average_fmt, spec.higher_is_better_average())
    lines = []
    for index, row in enumerate(rows):
        values = [Value(row.cells.get(column.key), column.fmt, index in bold[position])
                  for position, column in enumerate(spec.columns)]
        if spec.average:
            values.append(Value(_single(row.average), spec.average_fmt, index in average_bold))
        lines.append(Line(spec.display(row.key), values))
    return lines


def build_table(results: list[CellResult], spec: TableSpec) -> Table:
    """The table of `results` under `spec`: rows pooled over seeds in paper order, best student values marked."""
    value_headers = [column.header for column in spec.columns] + ([AVERAGE_HEADER] if spec.average else [])
    teacher = _teacher_line(spec) if spec.teacher is not None else None
    return Table(spec.headers(), value_headers, teacher, _student_lines(build_rows(results, spec), spec))


@dataclass(frozen=True)
class StatMarkup:
    """How a renderer writes a missing value, a bold mean and the ± between mean and std."""

    missing: str
    bold: str  # a format string around the mean, e.g. "**{}**"
    plus_minus: str


def format_stat(stat: Stat | None, fmt: str, bold: bool, markup: StatMarkup) -> str:
    """The mean (bold when best), with ± std for several seeds, or the missing mark."""
    if stat is None:
        return markup.missing
    mean = fmt.format(stat.mean)
    mean = markup.bold.format(mean) if bold else mean
    return mean if stat.std is None else f"{mean}{markup.plus_minus}{fmt.format(stat.std)}"
