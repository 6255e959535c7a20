"""The families table in docs/compress.md is the registry's (issue 26): regenerated, it is on the page verbatim."""

from __future__ import annotations

from pathlib import Path

from slim.harness.models.families import model_families
from slim.harness.models.families.table import family_table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "compress.md"


def test_the_docs_table_is_the_registry_table():
    assert family_table() in PAGE.read_text()


def test_the_table_has_a_row_per_registered_family():
    table = family_table()
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == sorted(name for name, _ in model_families.items())
