"""The compression figures beside a student's report, drawn by `slim compress` and `slim report` after the student
is written (never inside `compress`: a grid or test that compresses many times pays for figures only on request)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def write_figures(report: dict, directory: str | Path) -> list[Path]:
    """slim.reports.compression_figures in student `directory`; a plotting failure costs one warning line."""
    try:
        from slim.reports.compression_figures import write_compression_figures

        return write_compression_figures(report, directory)
    except Exception as error:  # noqa: BLE001 - any plotting failure is a warning, the student is already written
        logger.warning("compression figures not written in %s: %s: %s", directory, type(error).__name__, error)
        return []
