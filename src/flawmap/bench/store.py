"""Results store: one SQLite file, one row per finished run (full config on every row).

Each run is written in its own transaction keyed by a hash of its config, so a killed sweep
loses no finished run and a re-run skips what is done. ``export_csv`` writes the tidy table.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    row_json TEXT NOT NULL
)"""


class ResultStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def has(self, run_key: str) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM runs WHERE run_key = ?", (run_key,)).fetchone() is not None

    def done_keys(self) -> set[str]:
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT run_key FROM runs")}

    def add(self, run_key: str, row: dict[str, Any]) -> None:
        """Atomic insert (one transaction); a duplicate key replaces nothing and raises nothing."""
        with self._connect() as con:
            con.execute(
                "INSERT OR IGNORE INTO runs (run_key, created, row_json) VALUES (?, datetime('now'), ?)",
                (run_key, json.dumps(row, sort_keys=True, default=str)),
            )

    def rows(self) -> list[dict[str, Any]]:
        with self._connect() as con:
            return [json.loads(r[0]) for r in con.execute("SELECT row_json FROM runs ORDER BY rowid")]


def columns(rows: Iterable[dict[str, Any]], first: tuple[str, ...] = ()) -> list[str]:
    cols: list[str] = [c for c in first]
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike[str], first: tuple[str, ...] = ()) -> Path:
    """Write rows as CSV atomically (temp file + rename); missing cells are empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = columns(rows, first)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
