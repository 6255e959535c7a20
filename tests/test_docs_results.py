"""The README's result tables come from results: each committed docs/results/<table>.md is what its .json renders to
and is pasted in the README verbatim; the Markdown renderer prints the LaTeX table's rows, values and bolding."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tests.grid_echo  # noqa: F401 - registers the cheap `test_echo` cell kind
from slim.harness.cli.main import main
from slim.reports.latex import render_table
from slim.reports.markdown import load_results_json, render_markdown, results_json, write_markdown_report
from slim.reports.results import CellResult
from slim.reports.spec import TableSpec
from tests.grid_echo import write_spec

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
COMMITTED = sorted(RESULTS.glob("*.json"))


def cell(init: str, loss: str, seed: int, **metrics: float) -> CellResult:
    return CellResult(cell=f"{init}-{loss}-{seed}", axes={"init": init, "loss": loss}, seed=seed, metrics=metrics)


def table1_spec() -> TableSpec:
    return TableSpec(name="table1", caption="Scratch vs pruned", label="tab:t1", rows=["init", "loss"],
                     row_headers=["Init", "Loss"], teacher={"ppl": 36.69},
                     columns=[("ppl", "Val. PPL", False, "{:.2f}"), ("acc", "Cloze acc.", True, "{:.2f}")],
                     row_order=[["Scratch", "LM"], ["Pruned", "LM"], ["Pruned", "kd_lm"]])


def table1_results() -> list[CellResult]:
    return [cell("Scratch", "LM", 0, ppl=150.95, acc=0.28), cell("Pruned", "LM", 0, ppl=54.12, acc=0.53),
            cell("Pruned", "kd_lm", 0, ppl=45.0, acc=0.60), cell("Pruned", "kd_lm", 1, ppl=47.0)]


def test_markdown_has_the_latex_rows_values_and_bold():
    """Teacher first and never bold, seeds as mean ± sample std, the best per column bold, missing as –, labels
    escaped; the same cells are bold in the LaTeX."""
    results, spec = table1_results(), table1_spec()
    assert render_markdown(results, spec) == (
        "| Init | Loss | Val. PPL | Cloze acc. |\n"
        "| --- | --- | :---: | :---: |\n"
        "| Teacher |  | 36.69 | – |\n"
        "| Scratch | LM | 150.95 | 0.28 |\n"
        "| Pruned | LM | 54.12 | 0.53 |\n"
        "| Pruned | kd\\_lm | **46.00** ± 1.41 | **0.60** |\n")
    assert r"\textbf{46.00}\,$\pm$\,1.41 & \textbf{0.60}" in render_table(results, spec)


def test_results_json_renders_the_same_table(tmp_path):
    """write_markdown_report's JSON holds the spec and rows (no curves), and renders to its .md again."""
    results = [*table1_results()[:3], CellResult("x", {"init": "Pruned", "loss": "LM"}, 1, {"ppl": 1.0},
                                                 curves={"val/loss": "/tmp/run"})]
    paths = write_markdown_report(results, table1_spec(), tmp_path / "docs", source={"spec": "ablations/t.yaml"})
    assert sorted(path.name for path in paths.values()) == ["table1.json", "table1.md"]
    data = json.loads(paths["json"].read_text())
    assert data["source"] == {"spec": "ablations/t.yaml"} and all("curves" not in row for row in data["results"])
    again, spec = load_results_json(paths["json"].read_text())
    assert render_markdown(again, spec) == paths["md"].read_text() == render_markdown(results, table1_spec())
    assert results_json(again, spec, data["source"]) == paths["json"].read_text()


@pytest.mark.parametrize("source", COMMITTED, ids=[path.stem for path in COMMITTED])
def test_committed_table_is_what_its_json_renders(source: Path):
    """docs/results/<table>.md equals the Markdown its <table>.json renders to now."""
    results, spec = load_results_json(source.read_text())
    assert render_markdown(results, spec) == source.with_suffix(".md").read_text()


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("table", [path.with_suffix(".md") for path in COMMITTED], ids=[p.stem for p in COMMITTED])
def test_a_page_quotes_the_committed_table(table: Path):
    """README.md or a docs/ page pastes each committed table verbatim, so its numbers are the generated ones."""
    assert any(table.read_text() in page.read_text() for page in PAGES), table


def test_every_committed_table_has_its_json():
    """No docs/results/*.md without the JSON it was rendered from."""
    assert sorted(path.stem for path in RESULTS.glob("*.md")) == [path.stem for path in COMMITTED]


def benchmark_rows() -> list[str]:
    """The rows of bench/README.md's results table (the lines that start with a `bench/` script)."""
    return [line for line in (ROOT / "bench" / "README.md").read_text().splitlines() if line.startswith("| `bench/")]


def test_every_benchmark_row_names_its_results_files():
    """Each row of the benchmarks table names the bench/results/*.json its numbers come from, and they
    exist."""
    rows = benchmark_rows()
    assert len(rows) >= 9
    for row in rows:
        named = re.findall(r"`([\w.-]+\.json)`", row)
        assert named, f"no results file named in {row[:60]!r}"
        assert all((ROOT / "bench" / "results" / name).is_file() for name in named), named


def test_slim_report_markdown_writes_the_table_and_its_rows(tmp_path, capsys):
    """`slim report --format markdown --out DIR` writes <name>.md and the .json it re-renders from."""
    spec = write_spec(tmp_path, "axes:\n  train.lr: [0.1, 0.3]\nseeds: [0, 1]\nmetrics: [value]\n"
                                "report: {caption: Toy, label: tab:toy, rows: [train.lr], columns: [[value, Value]]}\n")
    assert main(["grid", str(spec)]) == 0
    out = tmp_path / "docs" / "results"
    assert main(["report", str(spec), "--format", "markdown", "--out", str(out)]) == 0
    assert f"md: {out / 'toy.md'}" in capsys.readouterr().out
    markdown = (out / "toy.md").read_text()
    assert markdown.splitlines()[2:] == ["| 0.1 | 1.50 ± 0.71 |", "| 0.3 | **3.50** ± 0.71 |"]
    results, table = load_results_json((out / "toy.json").read_text())
    assert render_markdown(results, table) == markdown and len(results) == 4
    assert not (tmp_path / "grid" / "report" / "toy.tex").exists()
