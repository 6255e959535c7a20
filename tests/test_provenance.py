"""Versions on every result: what `software()` records, the lock digest, the store's column and the report's note."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from importlib import metadata
from pathlib import Path

import torch

from slim.harness.cli.main import main
from slim.harness.grid import ResultsStore, prepare_grid, run_grid
from slim.harness.grid.store import COLUMNS
from slim.harness.provenance import (
    INSTALLED_LOCK,
    RECORDED_DISTRIBUTIONS,
    lock_digest,
    mixed_software_note,
    software,
    stamped,
    unstamped,
)
from tests.grid_echo import write_spec


def test_software_names_python_the_recorded_libraries_and_the_lock():
    record = software()
    assert list(record) == ["python", *RECORDED_DISTRIBUTIONS, "lock"]
    assert record["torch"] == torch.__version__ and record["transformers"] == metadata.version("transformers")
    assert stamped({"steps": 3}) == {"steps": 3, "software": record}
    assert unstamped(stamped({"steps": 3})) == {"steps": 3}  # a reused stage's record, as a fresh run returns it


def test_lock_digest_is_the_installed_lock_and_says_when_the_environment_left_it(tmp_path: Path):
    assert lock_digest(tmp_path) is None  # no lock installed: a package in an environment of the user's own
    matching = f"# header\ntorch=={metadata.version('torch')}\nTransformers=={metadata.version('transformers')}\n"
    (tmp_path / INSTALLED_LOCK).write_text(matching)
    assert lock_digest(tmp_path) == hashlib.sha256(matching.encode()).hexdigest()[:16]
    drifted = matching + "omegaconf==0.0.1\n"
    (tmp_path / INSTALLED_LOCK).write_text(drifted)
    assert lock_digest(tmp_path) == hashlib.sha256(drifted.encode()).hexdigest()[:16] + "+modified"


def test_mixed_software_note_names_each_differing_package_with_its_counts():
    old = {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.24.0", "lock": "a"}
    new = {**old, "transformers": "5.25.0", "lock": "b"}
    assert mixed_software_note([old, old], "t") is None
    assert mixed_software_note([old, new, new], "table2: the 3 finished cells") == (
        "note: table2: the 3 finished cells were made under different software: "
        "transformers 5.24.0 (1), 5.25.0 (2); lock a (1), b (2)")
    assert mixed_software_note([old, None], "t") == (
        "note: t were made under different software: python 3.11.7 (1), unrecorded (1); torch 2.13.0 (1), "
        "unrecorded (1); transformers 5.24.0 (1), unrecorded (1); lock a (1), unrecorded (1)")


def test_report_notes_cells_made_under_two_transformers_versions(tmp_path: Path, capsys):
    """Each done row stores the software that computed it; `slim report` prints one line when they differ."""
    spec = write_spec(tmp_path, "axes:\n  train.lr: [0.1, 0.3]\nmetrics: [value]\n"
                                "report: {caption: Toy, label: tab:toy, rows: [train.lr], columns: [[value, Value]]}\n")
    rows = run_grid(prepare_grid(spec))
    assert [row["software"] for row in rows] == [software(), software()]
    assert main(["report", str(spec)]) == 0
    assert "different software" not in capsys.readouterr().out
    older = {**software(), "transformers": "4.57.0"}  # sorts before any 5.x
    with sqlite3.connect(tmp_path / "grid" / "results.sqlite") as db:
        db.execute("UPDATE cells SET software = ? WHERE key = ?", (json.dumps(older), rows[0]["key"]))
    assert main(["report", str(spec)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "different software" in line]
    assert lines == [f"note: toy: the 2 finished cells were made under different software: transformers 4.57.0 (1), "
                     f"{software()['transformers']} (1)"]


def test_a_store_from_before_the_software_column_opens_with_it_empty(tmp_path: Path):
    """Rows stored before versions were recorded keep their results; the column is added, empty."""
    path = tmp_path / "results.sqlite"
    legacy = [name for name in COLUMNS if name != "software"]
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE cells ({', '.join(legacy)})")
        db.execute(f"INSERT INTO cells ({', '.join(legacy)}) VALUES ({', '.join('?' * len(legacy))})",
                   ["k", "s", "run", "{}", 0, "{}", "done", '{"value": 1.0}', "{}", None, None, 1, "w", "v", "t", "t",
                    "t"])
    with ResultsStore(path) as store:
        [row] = store.rows()
    assert row["metrics"] == {"value": 1.0} and row["software"] is None
