"""`slim report`'s compression figures: beside the `compression_report.json` of every finished cell's student.

`compress` cells point at the compressed student, `run` cells at the distilled one, which carries a copy of its
compression report; cells without one (an adaptation's) have no figures. Figures newer than their report are kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slim.harness.compression.figures import write_figures
from slim.harness.compression.lineage import REPORT_NAME

FORMATS = ("png", "pdf")


def _current(report_file: Path, names: list[str]) -> bool:
    """Every figure of the report exists and is at least as new as the report."""
    written = report_file.stat().st_mtime
    figures = [report_file.parent / f"{name}.{suffix}" for name in names for suffix in FORMATS]
    return all(figure.is_file() and figure.stat().st_mtime >= written for figure in figures)


def cell_report_files(rows: list[dict[str, Any]]) -> list[Path]:
    """The compression report of each finished cell's student, once per student directory."""
    files = []
    for row in rows:
        student = row["status"] == "done" and row["artifacts"].get("student")
        if student and (Path(student) / REPORT_NAME).is_file() and Path(student) / REPORT_NAME not in files:
            files.append(Path(student) / REPORT_NAME)
    return files


def write_cell_figures(rows: list[dict[str, Any]]) -> list[Path]:
    """Write the missing or outdated compression figures of the grid's finished cells; the student directories
    that have their figures afterwards (a plotting failure is one warning line and leaves its directory out)."""
    files = cell_report_files(rows)
    if not files:
        return []
    from slim.reports.compression_figures import figure_names  # matplotlib: only when there is something to draw

    done = []
    for report_file in files:
        report = json.loads(report_file.read_text())
        names = figure_names(report)
        if _current(report_file, names) or write_figures(report, report_file.parent):
            done.append(report_file.parent)
    return done
