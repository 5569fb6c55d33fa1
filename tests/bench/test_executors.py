"""Local process pool and Ray (a small local instance, 1 CPU) give the same results table as the sequential
local executor."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flawmap.cli import main

FAST = ["--param", "backbone=efficientnet_lite0", "--resize", "64", "--crop", "0", "--max-train", "4", "--threads", "1"]
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")


def _sweep(root: Path, out: Path, *extra: str) -> dict[str, dict[str, str]]:
    args = ["bench", "--data", str(root), "--categories", "object", "--methods", "patchcore",
            "--grid", "coreset_ratio=[0.05,0.3]", "--corruption", "salt_pepper:2:0.5", "--gallery", "1",
            "--out", str(out), *FAST, *extra]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4
    return {r["run_key"]: r for r in rows}


@pytest.fixture(scope="module")
def sequential(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return _sweep(synthetic_root, tmp_path_factory.mktemp("seq") / "res")


def _same_table(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> None:
    assert set(a) == set(b)
    for key in a:
        for col in (*METRICS, "corruption", "severity", "p", "coreset_ratio", "n_test"):
            x, y = a[key][col], b[key][col]
            assert x == y, (key, col)  # same threads, same numbers


def test_process_pool_matches_sequential(sequential, synthetic_root: Path, tmp_path: Path) -> None:
    _same_table(sequential, _sweep(synthetic_root, tmp_path / "res", "--workers", "2"))
    assert len(list((tmp_path / "res" / "artifacts").glob("*/best_00.png"))) == 4


def test_ray_matches_sequential(sequential, synthetic_root: Path, tmp_path: Path) -> None:
    import ray  # in the dev extra: pip install -e ".[dev]"

    try:
        _same_table(sequential, _sweep(synthetic_root, tmp_path / "res", "--executor", "ray", "--num-cpus", "1"))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert not ray.is_initialized()  # a Ray started by flawmap is stopped again
    assert len(list((tmp_path / "res" / "artifacts").glob("*/best_00.png"))) == 4
