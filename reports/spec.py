"""What one paper-style table shows: which axes label the rows, which metrics fill the columns, in what order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

RowKey = tuple[str, ...]  # one raw axis value per row axis, as text


class Column(NamedTuple):
    """One metric column; a plain (key, header, higher_is_better, fmt) tuple works too."""

    key: str
    header: str
    higher_is_better: bool = True
    fmt: str = "{:.2f}"


@dataclass(frozen=True)
class TableSpec:
    """A table over grid results: `name` is the file stem, `rows` the axes forming the row label.

    `row_order` lists row keys in the paper's order (a string stands for a one-axis key); rows it does
    not name follow in the order results first mention them. `row_names` maps raw axis values to the
    text shown (e.g. "kd+lm" -> "KD + LM"). The Avg. column is the mean of the row's column means.
    """

    name: str
    caption: str
    label: str
    rows: list[str]
    columns: list[Column]
    row_headers: list[str] | None = None
    teacher: dict[str, float] | None = None
    teacher_label: str = "Teacher"
    average: bool = False
    average_fmt: str = "{:.2f}"
    row_order: list[str | tuple[str, ...]] = field(default_factory=list)
    row_names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", [Column(*column) for column in self.columns])
        if not self.rows:
            raise ValueError("rows: name at least one axis that labels the rows")
        if not self.columns:
            raise ValueError("columns: name at least one metric column")
        if self.row_headers is not None and len(self.row_headers) != len(self.rows):
            raise ValueError(f"row_headers: need one header per row axis ({len(self.rows)}), "
                             f"got {len(self.row_headers)}")
        if self.average and len({column.higher_is_better for column in self.columns}) > 1:
            raise ValueError("average: the columns mix higher- and lower-is-better metrics, so their mean has no best")
        for key in self.ordered_keys():
            if len(key) != len(self.rows):
                raise ValueError(f"row_order: {key} needs one value per row axis {self.rows}")

    def ordered_keys(self) -> list[RowKey]:
        """`row_order` as row keys."""
        return [(entry,) if isinstance(entry, str) else tuple(entry) for entry in self.row_order]

    def display(self, key: RowKey) -> list[str]:
        """The shown text of each part of a row key."""
        return [self.row_names.get(part, part) for part in key]

    def headers(self) -> list[str]:
        """Headers of the row-label columns."""
        return self.row_headers or list(self.rows)

    def higher_is_better_average(self) -> bool:
        return self.columns[0].higher_is_better
