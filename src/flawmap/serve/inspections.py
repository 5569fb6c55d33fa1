"""The inspection log of ``flawmap serve --log DIR``: one SQLite row per scored image, written off the hot path.

    DIR/inspections.sqlite     table ``inspections`` (one row per image) and ``images`` (kept uploads)
    DIR/images/ab/abcdef...    kept uploads, named by their SHA-256 (identical uploads are stored once)

``InspectionLog.record(row, data)`` never blocks and never raises: it puts the row on a bounded queue that
one writer thread drains, committing every batch (at most ``COMMIT_S`` seconds after the first row of it
arrived). A kill -9 therefore loses at most the rows not committed yet: those of the last ``COMMIT_S``
seconds, at most ``queue_max`` rows; SQLite's write-ahead log keeps the file consistent (a transaction is
all there or not there). When the queue is full (the disk is slower than the line), or the folder cannot be
written (read-only, full disk), rows are counted as not logged (``dropped``) and one warning is logged;
predictions go on. Kept images beyond ``max_bytes`` are deleted oldest first; their rows stay.

Reads (``query``, ``get``, ``summary``) and labels open their own connection per call, so they work from
any thread and while the writer writes (WAL: readers never block the writer).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import queue
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import ConfigError, DataError
from ..io import atomic_write_bytes

log = logging.getLogger(__name__)

DB_NAME = "inspections.sqlite"
IMAGES_DIR = "images"
#: the writer commits a batch at most this long after its first row arrived (bound of a kill -9's loss)
COMMIT_S = 0.25
VERDICTS = ("ok", "anomalous", "none")  # "none": the model has no calibration
LABELS = ("good", "defect")
LABEL_FILTERS = (*LABELS, "none")  # "none": not reviewed yet
MAX_NOTE = 500
MAX_PAGE = 200
_SHA = re.compile(r"[0-9a-f]{64}")
_MODEL_ID = re.compile(r"[0-9a-f]{1,64}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,              -- unix seconds, when the image was scored
    request_id TEXT NOT NULL,
    name TEXT NOT NULL,              -- the upload's file name (or "body")
    image_sha256 TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL,   -- the uploaded image's size (px)
    score REAL NOT NULL, normalized_score REAL, verdict TEXT NOT NULL, threshold REAL,
    model_id TEXT NOT NULL, model_version INTEGER NOT NULL,
    latency_ms REAL NOT NULL, batch_size INTEGER NOT NULL,
    key_id TEXT,                     -- role and fingerprint of the key used, never the key
    label TEXT, note TEXT, labeled_by TEXT, labeled_at REAL
);
CREATE INDEX IF NOT EXISTS inspections_time ON inspections (time);
CREATE INDEX IF NOT EXISTS inspections_verdict ON inspections (verdict, id);
CREATE INDEX IF NOT EXISTS inspections_label ON inspections (label, id);
CREATE INDEX IF NOT EXISTS inspections_sha ON inspections (image_sha256);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY, bytes INTEGER NOT NULL, last_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_last ON images (last_time);
"""
ROW_FIELDS = ("time", "request_id", "name", "image_sha256", "width", "height", "score", "normalized_score",
              "verdict", "threshold", "model_id", "model_version", "latency_ms", "batch_size", "key_id")


def connect(folder: Path, *, create: bool = False) -> sqlite3.Connection:
    """A connection to the log of ``folder`` (WAL, NORMAL sync: a commit survives a process kill; 5 s busy
    wait). Without ``create`` a missing log is a DataError naming the folder."""
    path = Path(folder) / DB_NAME
    if not create and not path.is_file():
        raise DataError(f"{folder}: no inspection log here (expected {DB_NAME}; start `flawmap serve MODEL --log "
                        f"{folder}`)")
    con = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
    con.row_factory = sqlite3.Row
    if create:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def image_path(folder: Path, sha: str) -> Path:
    """Where a kept upload lives: only a 64-hex-digit hash names a file, so no id can reach outside ``folder``."""
    if not _SHA.fullmatch(sha):
        raise DataError(f"not a SHA-256 hex digest: {sha!r:.80}")
    return Path(folder) / IMAGES_DIR / sha[:2] / sha


def keeps(keep_images: str, verdict: str) -> bool:
    """Whether an upload with this verdict is kept under ``--keep-images``."""
    return keep_images == "all" or (keep_images == "anomalous" and verdict == "anomalous")


class InspectionLog:
    """The writer side: a bounded queue and one thread (see the module doc)."""

    def __init__(self, folder: str | os.PathLike[str], *, keep_images: str = "anomalous",
                 max_bytes: int | None = None, queue_max: int = 10_000) -> None:
        self.folder = Path(folder)
        self.keep_images = keep_images
        self.max_bytes = max_bytes
        self.logged = 0  # rows committed by this process
        self.dropped = 0  # rows not logged (queue full, unwritable folder)
        self.evicted = 0  # kept images deleted by --max-log-gb
        self.kept_bytes = 0
        self.available = False  # the database could be opened for writing
        self._queue: queue.Queue[tuple[dict[str, Any], bytes | None] | None] = queue.Queue(queue_max)
        self._warned = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> InspectionLog:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            con = connect(self.folder, create=True)
            self.kept_bytes = int(con.execute("SELECT COALESCE(SUM(bytes), 0) FROM images").fetchone()[0])
            con.close()
            self.available = True
        except (sqlite3.Error, OSError) as exc:
            self._warn(f"cannot open the inspection log in {self.folder} ({exc}); serving without a log")
        self._thread = threading.Thread(target=self._run, name="flawmap-log-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the writer thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    @property
    def lag(self) -> int:
        """Rows waiting for the writer."""
        return self._queue.qsize()

    # ---- the hot path --------------------------------------------------------------------------------
    def record(self, row: dict[str, Any], data: bytes | None) -> None:
        """Queue one row (``ROW_FIELDS``) and the upload's bytes; never blocks, never raises."""
        if not self.available:
            self._drop(1, "the inspection log is not writable")
            return
        try:
            self._queue.put_nowait((row, data if keeps(self.keep_images, row["verdict"]) else None))
        except queue.Full:
            self._drop(1, f"the inspection log queue is full ({self._queue.maxsize} rows): the disk is too slow")

    def _warn(self, message: str) -> None:
        with self._lock:
            first, self._warned = not self._warned, True
        if first:
            log.warning("%s; rows are counted as not logged (flawmap_log_dropped_rows)", message)

    def _drop(self, n: int, why: str) -> None:
        with self._lock:
            self.dropped += n
        self._warn(why)

    # ---- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        con: sqlite3.Connection | None = None
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch, deadline, done = [item], time.monotonic() + COMMIT_S, False
            while len(batch) < 1024 and (left := deadline - time.monotonic()) > 0:
                try:
                    nxt = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            try:
                con = con or connect(self.folder, create=True)
                self._write(con, batch)
            except (sqlite3.Error, OSError) as exc:
                if con is not None:
                    try:
                        con.rollback()
                    except sqlite3.Error:
                        pass
                self._drop(len(batch), f"cannot write the inspection log in {self.folder} ({exc})")
            if done:
                break
        if con is not None:
            con.close()

    def _write(self, con: sqlite3.Connection, batch: list[tuple[dict[str, Any], bytes | None]]) -> None:
        new_bytes = 0
        for row, data in batch:
            if data is None:
                continue
            sha = row["image_sha256"]
            known = con.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha,)).fetchone()
            if not known:
                try:
                    path = image_path(self.folder, sha)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(path, data)
                    new_bytes += len(data)
                except OSError as exc:  # the row is still logged, without its image
                    self._warn(f"cannot keep an image in {self.folder} ({exc})")
                    continue
            con.execute("INSERT INTO images (sha256, bytes, last_time) VALUES (?, ?, ?) ON CONFLICT(sha256) "
                        "DO UPDATE SET last_time = excluded.last_time", (sha, len(data), row["time"]))
        con.executemany(f"INSERT INTO inspections ({', '.join(ROW_FIELDS)}) VALUES ({', '.join('?' * len(ROW_FIELDS))})",
                        [tuple(row[k] for k in ROW_FIELDS) for row, _ in batch])
        con.commit()
        with self._lock:
            self.logged += len(batch)
            self.kept_bytes += new_bytes
        if self.max_bytes is not None and self.kept_bytes > self.max_bytes:
            self._evict(con)

    def _evict(self, con: sqlite3.Connection) -> None:
        """Delete the least recently seen kept images until they fit ``max_bytes``; rows stay."""
        assert self.max_bytes is not None  # only called when a budget is set
        over = self.kept_bytes - self.max_bytes
        gone, freed = [], 0
        for sha, n in con.execute("SELECT sha256, bytes FROM images ORDER BY last_time, sha256"):
            if freed >= over:
                break
            gone.append(sha)
            freed += n
        con.executemany("DELETE FROM images WHERE sha256 = ?", [(s,) for s in gone])
        con.commit()  # first the rows: a kill between the two leaves a stray file, never a row without its file
        for sha in gone:
            image_path(self.folder, sha).unlink(missing_ok=True)
        with self._lock:
            self.kept_bytes -= freed
            self.evicted += len(gone)


# ---- reading -----------------------------------------------------------------------------------------
def parse_time(text: str | None, what: str) -> float | None:
    """``since`` / ``until``: unix seconds or an ISO 8601 time (UTC when it has no zone)."""
    if text is None or text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{what}={text!r:.60}: give unix seconds or an ISO 8601 time "
                              "(e.g. 2026-01-31T08:00:00Z)") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        v = t.timestamp()
    if not math.isfinite(v):
        raise ConfigError(f"{what}={text!r:.60}: must be a finite time")
    return v


@dataclass(frozen=True)
class Query:
    """Filters of ``GET /v1/inspections`` (checked: an error lists the allowed values)."""

    verdict: str | None = None
    label: str | None = None
    since: float | None = None
    until: float | None = None
    model_id: str | None = None
    request_id: str | None = None
    limit: int = 50
    cursor: int | None = None  # rows with an id below this (the previous page's next_cursor)

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ConfigError(f"verdict={self.verdict!r:.40}: allowed values: {', '.join(VERDICTS)}")
        if self.label is not None and self.label not in LABEL_FILTERS:
            raise ConfigError(f"label={self.label!r:.40}: allowed values: {', '.join(LABEL_FILTERS)}")
        if self.model_id is not None and not _MODEL_ID.fullmatch(self.model_id):
            raise ConfigError(f"model_id={self.model_id!r:.40}: must be lower-case hex digits")
        if self.request_id is not None and not re.fullmatch(r"[0-9a-f]{32}", self.request_id):
            raise ConfigError(f"request_id={self.request_id!r:.40}: must be 32 lower-case hex digits")
        if not 1 <= self.limit <= MAX_PAGE:
            raise ConfigError(f"limit={self.limit}: must be in [1, {MAX_PAGE}]")
        if self.cursor is not None and self.cursor < 1:
            raise ConfigError(f"cursor={self.cursor}: must be an integer >= 1 (a next_cursor value)")


def _record(folder: Path, r: sqlite3.Row) -> dict[str, Any]:
    d = {k: r[k] for k in r.keys() if k != "kept"}
    d["image_kept"] = bool(r["kept"])
    return d


_SELECT = ("SELECT inspections.*, images.sha256 IS NOT NULL AS kept FROM inspections "
           "LEFT JOIN images ON images.sha256 = inspections.image_sha256")


def query(folder: Path, q: Query) -> tuple[list[dict[str, Any]], int | None]:
    """A page of records, newest first, and the cursor of the next page (None: this was the last)."""
    where: list[str] = []
    args: list[Any] = []
    for col, v in (("verdict", q.verdict), ("label", q.label), ("model_id", q.model_id), ("request_id", q.request_id)):
        if v is None:
            continue
        if v == "none" and col == "label":
            where.append("label IS NULL")
        else:
            where.append(f"{col} = ?")
            args.append(v)
    if q.since is not None:
        where.append("time >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("time < ?")
        args.append(q.until)
    if q.cursor is not None:
        where.append("id < ?")
        args.append(q.cursor)
    sql = _SELECT + (" WHERE " + " AND ".join(f"inspections.{w}" for w in where) if where else "") + \
        " ORDER BY inspections.id DESC LIMIT ?"
    con = connect(folder)
    try:
        rows = con.execute(sql, (*args, q.limit + 1)).fetchall()
    finally:
        con.close()
    items = [_record(folder, r) for r in rows[:q.limit]]
    return items, (items[-1]["id"] if len(rows) > q.limit else None)


def get(folder: Path, inspection_id: int) -> dict[str, Any] | None:
    con = connect(folder)
    try:
        r = con.execute(_SELECT + " WHERE inspections.id = ?", (inspection_id,)).fetchone()
    finally:
        con.close()
    return None if r is None else _record(folder, r)


def set_label(folder: Path, inspection_id: int, label: str, note: str | None, who: str | None) -> dict[str, Any] | None:
    """Store an operator's review (``LABELS``, a note of at most ``MAX_NOTE`` characters); None: no such row."""
    if label not in LABELS:
        raise ConfigError(f"label={label!r:.40}: allowed values: {', '.join(LABELS)}")
    if note is not None and len(note) > MAX_NOTE:
        raise ConfigError(f"the note has {len(note)} characters; at most {MAX_NOTE} are allowed")
    con = connect(folder)
    try:
        cur = con.execute("UPDATE inspections SET label = ?, note = ?, labeled_by = ?, labeled_at = ? WHERE id = ?",
                          (label, note or None, who, time.time(), inspection_id))
        con.commit()
    finally:
        con.close()
    return get(folder, inspection_id) if cur.rowcount else None


def labeled_images(folder: Path, label: str) -> list[Path]:
    """The kept uploads with this review label (``flawmap update --from-log DIR --label good``), oldest first."""
    if label not in LABELS:
        raise ConfigError(f"--label {label!r}: allowed values: {', '.join(LABELS)}")
    con = connect(folder)
    try:
        shas = [r[0] for r in con.execute(
            "SELECT DISTINCT inspections.image_sha256 FROM inspections JOIN images ON images.sha256 = "
            "inspections.image_sha256 WHERE label = ? ORDER BY inspections.id", (label,))]
    finally:
        con.close()
    return [p for p in (image_path(folder, s) for s in shas) if p.is_file()]


def iter_rows(folder: Path) -> Iterator[dict[str, Any]]:
    con = connect(folder)
    try:
        for r in con.execute(_SELECT + " ORDER BY inspections.id"):
            yield _record(folder, r)
    finally:
        con.close()


def summary(folder: Path, percentiles: Sequence[float] = (50, 90, 99)) -> dict[str, Any]:
    """Counts per verdict and label, the false-alarm rate among reviewed good parts, score percentiles."""
    import numpy as np

    con = connect(folder)
    try:
        n = con.execute("SELECT COUNT(*) FROM inspections").fetchone()[0]
        verdicts = dict(con.execute("SELECT verdict, COUNT(*) FROM inspections GROUP BY verdict").fetchall())
        labels = {k or "none": v for k, v in con.execute("SELECT label, COUNT(*) FROM inspections GROUP BY label")}
        good = con.execute("SELECT COUNT(*), COALESCE(SUM(verdict = 'anomalous'), 0) FROM inspections "
                           "WHERE label = 'good'").fetchone()
        defect = con.execute("SELECT COUNT(*), COALESCE(SUM(verdict = 'ok'), 0) FROM inspections "
                             "WHERE label = 'defect'").fetchone()
        scores = np.array([r[0] for r in con.execute("SELECT score FROM inspections")], dtype=np.float64)
        span = con.execute("SELECT MIN(time), MAX(time) FROM inspections").fetchone()
        models = [dict(r) for r in con.execute("SELECT model_id, model_version, COUNT(*) AS n FROM inspections "
                                               "GROUP BY model_id, model_version ORDER BY MIN(id)")]
        kept = con.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM images").fetchone()
    finally:
        con.close()
    return {"n": n, "verdicts": verdicts, "labels": labels,
            "reviewed_good": good[0], "false_alarms": good[1],
            "false_alarm_rate": good[1] / good[0] if good[0] else None,
            "reviewed_defects": defect[0], "misses": defect[1],
            "score_percentiles": {f"p{p:g}": float(np.percentile(scores, p)) for p in percentiles} if n else {},
            "first": span[0], "last": span[1], "models": models, "kept_images": kept[0], "kept_bytes": kept[1]}


def export_csv(folder: Path, out: Path) -> int:
    """Every row as CSV (written atomically); returns the number of rows."""
    from ..io import atomic_write

    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w", newline="") as fh:
            w = None
            for rec in iter_rows(folder):
                if w is None:
                    w = csv.DictWriter(fh, fieldnames=list(rec))
                    w.writeheader()
                w.writerow(rec)
                n += 1
            if w is None:
                fh.write(",".join(("id", *ROW_FIELDS)) + "\n")

    atomic_write(out, write)
    return n
