"""Grid results as paper tables (booktabs LaTeX) and Figure 2-style loss curves; plain data in, files out."""

from reports.curves import CurveSpec
from reports.render import write_report
from reports.results import CellResult, load_run_metrics
from reports.spec import Column, TableSpec

__all__ = ["CellResult", "Column", "CurveSpec", "TableSpec", "load_run_metrics", "write_report"]
