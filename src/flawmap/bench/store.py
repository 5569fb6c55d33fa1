"""Results store: one SQLite file, one row per finished run (full config on every row).

Each run is written in its own transaction keyed by a hash of its config, so a killed sweep
loses no finished run and a re-run skips what is done. ``write_csv`` writes the tidy table
(``write_parquet`` too when pyarrow is installed).

Tables: ``runs`` (run_key, created, row_json), ``details`` (run_key -> per-image scores, labels,
pixel ROC points and the gallery index used by the report), ``tags`` (run_key, experiment): the
experiments of a study a run belongs to (one run can serve several, it is computed once).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from ..io import atomic_write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    row_json TEXT NOT NULL
)"""
_SCHEMA_DETAILS = """
CREATE TABLE IF NOT EXISTS details (
    run_key TEXT PRIMARY KEY,
    details_json TEXT NOT NULL
)"""
_SCHEMA_TAGS = """
CREATE TABLE IF NOT EXISTS tags (
    run_key TEXT NOT NULL,
    experiment TEXT NOT NULL,
    PRIMARY KEY (run_key, experiment)
)"""


class ResultStore:
    """The results database. ``readonly=True`` (used by the report) opens it without writing anything,
    so a store on a read-only mount or in a folder without write access can still be read."""

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._immutable = False
        if readonly:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(_SCHEMA)
            con.execute(_SCHEMA_DETAILS)
            con.execute(_SCHEMA_TAGS)

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            con = sqlite3.connect(self.path, timeout=60)
            con.execute("PRAGMA journal_mode=WAL")
            return con
        uri = self.path.absolute().as_uri()
        if not self._immutable:
            con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60)
            try:
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return con
            except sqlite3.OperationalError:  # a WAL database in a folder we cannot write (no -shm file)
                con.close()
                self._immutable = True
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=60)

    def has(self, run_key: str) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM runs WHERE run_key = ?", (run_key,)).fetchone() is not None

    def done_keys(self) -> set[str]:
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT run_key FROM runs")}

    def fingerprints(self) -> dict[str, str | None]:
        """run_key -> the dataset fingerprint stored with the run (None for runs stored without one)."""
        with self._connect() as con:
            return {k: fp for k, fp in con.execute(
                "SELECT run_key, json_extract(row_json, '$.data_fingerprint') FROM runs")}

    def add(self, run_key: str, row: dict[str, Any], details: dict[str, Any] | None = None,
            experiments: Iterable[str] = (), replace: bool = False) -> None:
        """Atomic insert of a run with its details and tags (one transaction); a duplicate key
        replaces nothing and raises nothing, unless ``replace`` (a run redone because its dataset
        changed replaces its stale row and details)."""
        with self._connect() as con:
            cur = con.execute(
                f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO runs (run_key, created, row_json) "
                "VALUES (?, datetime('now'), ?)",
                (run_key, json.dumps(row, sort_keys=True, default=str)),
            )
            if cur.rowcount and details:
                con.execute("INSERT OR REPLACE INTO details (run_key, details_json) VALUES (?, ?)",
                            (run_key, json.dumps(details, default=str)))
            con.executemany("INSERT OR IGNORE INTO tags (run_key, experiment) VALUES (?, ?)",
                            [(run_key, e) for e in experiments])

    def tag(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record (run_key, experiment) memberships (idempotent; runs need not exist yet)."""
        with self._connect() as con:
            con.executemany("INSERT OR IGNORE INTO tags (run_key, experiment) VALUES (?, ?)", list(pairs))

    def experiments(self) -> dict[str, list[str]]:
        """run_key -> sorted experiment names."""
        out: dict[str, list[str]] = {}
        with self._connect() as con:
            for key, exp in con.execute("SELECT run_key, experiment FROM tags ORDER BY experiment"):
                out.setdefault(key, []).append(exp)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """All finished runs in insertion order; runs tagged with experiments get an ``experiment``
        column (names joined by ';')."""
        tags = self.experiments()
        with self._connect() as con:
            rows = [json.loads(r[0]) for r in con.execute("SELECT row_json FROM runs ORDER BY rowid")]
        for r in rows:
            if r.get("run_key") in tags:
                r["experiment"] = ";".join(tags[r["run_key"]])
        return rows

    def details(self, run_key: str | None = None) -> dict[str, dict[str, Any]]:
        """run_key -> details (per-image scores/labels, pixel ROC, gallery index); one key or all."""
        with self._connect() as con:
            if run_key is None:
                cur = con.execute("SELECT run_key, details_json FROM details")
            else:
                cur = con.execute("SELECT run_key, details_json FROM details WHERE run_key = ?", (run_key,))
            return {k: json.loads(v) for k, v in cur}


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
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})

    atomic_write(path, write)
    return path


def write_parquet(rows: list[dict[str, Any]], path: str | os.PathLike[str], first: tuple[str, ...] = ()) -> Path | None:
    """Write rows as Parquet atomically when pyarrow is installed (else return None). Lists are
    stored as JSON text; a column with mixed types is stored as text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = columns(rows, first)
    data: dict[str, list[Any]] = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        vals = [json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for v in vals]
        kinds = {type(v) for v in vals if v is not None}
        if kinds == {int, float}:
            vals = [None if v is None else float(v) for v in vals]
        elif len(kinds) > 1:
            vals = [None if v is None else str(v) for v in vals]
        data[c] = vals
    atomic_write(path, lambda tmp: pq.write_table(pa.table(data), tmp))
    return path


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    if text[0] in "[{(":
        try:
            return ast.literal_eval(text)  # lists are written as Python literals; literals only, no code
        except (ValueError, SyntaxError):
            return text
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], Path]:
    """Rows and details from a results.sqlite, a results.csv or a bench output folder.

    Returns (rows, details by run_key, the bench output folder). A CSV gives rows only (cells parsed
    back to numbers, lists, booleans or None), plus the details of a results.sqlite next to it.
    """
    from ..errors import DataError

    path = Path(path)
    if path.is_dir():
        folder = path
        sqlite = path / "results.sqlite"
        if not sqlite.is_file():
            raise DataError(f"{path} has no results.sqlite (expected a `flawmap bench` output folder)")
        path = sqlite
    if not path.is_file():
        raise DataError(f"results file {path} not found (give results.sqlite, results.csv or a bench output folder)")
    folder = path.parent
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = [{k: _parse_cell(v) for k, v in r.items()} for r in csv.DictReader(f)]
        sqlite = folder / "results.sqlite"
        details = ResultStore(sqlite, readonly=True).details() if sqlite.is_file() else {}
        return rows, details, folder
    if path.suffix not in (".sqlite", ".db", ".sqlite3"):
        raise DataError(f"{path}: unsupported results file; give results.sqlite, results.csv or a bench output folder")
    try:
        store = ResultStore(path, readonly=True)
        return store.rows(), store.details(), folder
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: not a flawmap results database ({exc})") from None
