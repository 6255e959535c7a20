"""SQLite results store: one row per grid cell, keyed by the cell's config hash.

Every write is one transaction (a killed process leaves each row either before or after a write),
the journal is WAL so parallel workers and Slurm jobs write concurrently, and a corrupt file is reported,
never recreated: it may hold results that took GPU-days. SQLite errors become one line naming the file and
what went wrong (a full disk, a read-only or locked file is not corruption); a damaged row is named by its key.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slim.harness.errors import UserError
from slim.harness.grid.expand import Cell

STATUSES = ("pending", "running", "done", "failed")
JSON_COLUMNS = ("axes", "config", "metrics", "artifacts", "software")
SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    kind TEXT NOT NULL,
    axes TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    metrics TEXT,
    artifacts TEXT,
    error TEXT,
    traceback TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    code_version TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    software TEXT
)
"""
COLUMNS = ("key", "spec", "kind", "axes", "seed", "config", "status", "metrics", "artifacts", "error", "traceback",
           "attempts", "worker", "code_version", "created_at", "started_at", "finished_at", "software")
# Columns added after the first release, each with its type: a store written before gets them, empty, on open.
ADDED_COLUMNS = {"software": "TEXT"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# SQLite primary result codes (https://sqlite.org/rescode.html) -> what the user is told.
SQLITE_PROBLEMS = {
    3: "no permission to write it", 5: "it is locked by another process", 6: "it is locked by another process",
    8: "it is read-only", 10: "disk I/O error", 13: "the disk is full", 14: "it cannot be opened (missing folder, "
    "no permission or a read-only location)", 23: "no permission to write it",
}
SQLITE_CORRUPT = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def store_error(path: Path, err: sqlite3.DatabaseError) -> UserError:
    """One line for a SQLite failure: only a corrupt or foreign file is called corrupt."""
    code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF
    if code in SQLITE_CORRUPT or not isinstance(err, sqlite3.OperationalError):
        return UserError(f"results store {path} is corrupt or not a SQLite database ({err}); move it away or "
                         f"restore it, it is never recreated")
    return UserError(f"results store {path}: {SQLITE_PROBLEMS.get(code, str(err))} ({err})")


@contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """Turn the SQLite errors of the block into `store_error`s."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        raise store_error(path, err) from None


def _connect(path: Path) -> sqlite3.Connection:
    """Open, refuse a corrupt or foreign file, then switch to WAL and create the table if new."""
    fresh = not path.exists() or path.stat().st_size == 0
    connection = sqlite3.connect(path, timeout=60.0)
    try:
        with sqlite_errors(path):
            if not fresh:
                problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise UserError(f"results store {path} is corrupt ({problems[0]}); move it away or restore it, "
                                    f"it is never recreated")
            connection.execute("PRAGMA journal_mode=WAL")
            with connection:
                connection.execute(SCHEMA)
            present = [row[1] for row in connection.execute("PRAGMA table_info(cells)")]
            missing = [name for name in ADDED_COLUMNS if name not in present]
            if present + missing == list(COLUMNS) and missing:
                with connection:
                    for name in missing:
                        connection.execute(f"ALTER TABLE cells ADD COLUMN {name} {ADDED_COLUMNS[name]}")
                present += missing
    except UserError:
        connection.close()
        raise
    if present != list(COLUMNS):
        connection.close()
        raise UserError(f"results store {path}: table 'cells' has columns {present}, expected {list(COLUMNS)}")
    return connection


class ResultsStore:
    """Rows of grid cells: status pending -> running -> done | failed, with metrics, artifacts and errors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(self.path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: Iterable[Any]) -> None:
        with sqlite_errors(self.path), self._db:
            self._db.execute(sql, tuple(params))

    def add(self, cells: list[Cell]) -> None:
        """Insert a pending row for every cell not stored yet (rows already there keep their status)."""
        with sqlite_errors(self.path), self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO cells (key, spec, kind, axes, seed, config, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                [(c.key, c.spec, c.kind, json.dumps(c.axes), c.seed, json.dumps(asdict(c.config)), _now())
                 for c in cells])

    def mark_running(self, key: str, worker: str, code_version: str) -> None:
        self._write("UPDATE cells SET status = 'running', attempts = attempts + 1, worker = ?, code_version = ?, "
                    "started_at = ?, finished_at = NULL, error = NULL, traceback = NULL WHERE key = ?",
                    (worker, code_version, _now(), key))

    def mark_done(self, key: str, metrics: dict[str, float], artifacts: dict[str, str],
                  software: dict[str, str | None]) -> None:
        """Record a finished cell with the software that computed it (slim.harness.provenance.software)."""
        self._write("UPDATE cells SET status = 'done', metrics = ?, artifacts = ?, software = ?, finished_at = ? "
                    "WHERE key = ?", (json.dumps(metrics), json.dumps(artifacts), json.dumps(software), _now(), key))

    def mark_failed(self, key: str, error: str, traceback: str) -> None:
        self._write("UPDATE cells SET status = 'failed', error = ?, traceback = ?, finished_at = ? WHERE key = ?",
                    (error, traceback, _now(), key))

    def column(self, name: str) -> dict[str, Any]:
        """key -> value of one column for every row."""
        return {row["key"]: row[name] for row in self._select(("key", name))}

    def statuses(self) -> dict[str, str]:
        """key -> status of every row."""
        return self.column("status")

    def rows(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Rows as plain dicts (JSON columns decoded), in `keys` order when given, else insertion order."""
        rows = {row["key"]: row for row in self._select(COLUMNS)}
        return [rows[key] for key in keys if key in rows] if keys is not None else list(rows.values())

    def _select(self, columns: tuple[str, ...]) -> list[dict[str, Any]]:
        """`columns` (the first is `key`) of every row in insertion order. Text is fetched as bytes and decoded
        here, so bytes damaged inside a row fail naming that row instead of somewhere in SQLite's decoder."""
        self._db.text_factory = bytes
        try:
            with sqlite_errors(self.path):
                records = self._db.execute(f"SELECT {', '.join(columns)} FROM cells ORDER BY rowid").fetchall()
        finally:
            self._db.text_factory = str
        return [self._decode(columns, record) for record in records]

    def _decode(self, columns: tuple[str, ...], record: tuple) -> dict[str, Any]:
        key = record[0].decode(errors="replace") if isinstance(record[0], bytes) else record[0]
        try:
            row = {name: value.decode() if isinstance(value, bytes) else value for name, value in zip(columns, record)}
            for name in JSON_COLUMNS:
                if row.get(name) is not None:
                    row[name] = json.loads(row[name])
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"results store {self.path}: row {key} is damaged ({type(err).__name__}: {err}); "
                            f"restore the file or delete that row, the other rows are intact") from None
        return row
