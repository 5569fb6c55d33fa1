"""Results store: one transaction per run (row + details + tags), CSV round trip, optional Parquet."""

from __future__ import annotations

from pathlib import Path

import pytest

from flawmap.bench.store import ResultStore, read_rows, write_csv, write_parquet
from flawmap.errors import DataError


def _row(key: str, **kw) -> dict:
    return {"method": "patchcore", "category": "object", "image_auroc": 0.9, "pixel_auroc": None,
            "layers": ["blocks.2", "blocks.4"], "coreset_ratio": 0.1, "run_key": key, "feature_cache": True, **kw}


def test_add_rows_details_tags(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    store.tag([("a", "comparison"), ("a", "sweep"), ("b", "sweep")])
    store.add("a", _row("a"), {"scores": [0.1, 0.9], "labels": [0, 1]}, ["comparison"])
    store.add("a", _row("a", image_auroc=0.1), {"scores": [5]})  # duplicate: ignored, nothing replaced
    store.add("b", _row("b", coreset_ratio=0.01))
    rows = store.rows()
    assert [r["run_key"] for r in rows] == ["a", "b"]
    assert rows[0]["image_auroc"] == 0.9 and rows[0]["experiment"] == "comparison;sweep"
    assert rows[1]["experiment"] == "sweep"
    assert store.details() == {"a": {"scores": [0.1, 0.9], "labels": [0, 1]}}
    assert store.done_keys() == {"a", "b"}


def test_csv_round_trip_and_read_rows(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    store.add("a", _row("a"), {"scores": [1.0]})
    write_csv(store.rows(), tmp_path / "results.csv", ("method",))
    rows, details, folder = read_rows(tmp_path / "results.csv")
    assert rows[0]["layers"] == ["blocks.2", "blocks.4"] and rows[0]["pixel_auroc"] is None
    assert rows[0]["image_auroc"] == 0.9 and rows[0]["feature_cache"] is True
    assert details == {"a": {"scores": [1.0]}} and folder == tmp_path
    rows2, _, _ = read_rows(tmp_path)  # the bench folder
    assert rows2[0]["layers"] == ["blocks.2", "blocks.4"]
    with pytest.raises(DataError, match="no results.sqlite"):
        read_rows(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else None


def test_parquet_only_with_pyarrow(tmp_path: Path) -> None:
    rows = [_row("a"), _row("b", image_auroc=1, extra="x")]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert write_parquet(rows, tmp_path / "r.parquet") is None
        return
    path = write_parquet(rows, tmp_path / "r.parquet", ("method",))
    table = pq.read_table(path)
    assert table.num_rows == 2 and table.column_names[0] == "method"
    assert table.column("image_auroc").to_pylist() == [0.9, 1.0]
