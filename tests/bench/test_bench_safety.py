"""Nothing lost, nothing silent, for `flawmap bench` / `flawmap report`: typos in keys, resume after a dataset change, two
processes on one results folder, a read-only results store."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flawmap.bench.store import ResultStore
from flawmap.cli import main

FAST = ["--param", "backbone=efficientnet_lite0", "--resize", "64", "--crop", "0", "--max-train", "4",
        "--gallery", "1", "--no-feature-cache"]


def _bench(data: Path, out: Path, *extra: str) -> list[str]:
    return ["bench", "--data", str(data), "--categories", "object", "--methods", "patchcore", "--out", str(out),
            *FAST, *extra]


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(out / "results.csv")))


@pytest.mark.parametrize("flag, key", [("--grid", "coreset_raito=[0.1,0.2]"), ("--param", "coreset_raito=0.1"),
                                       ("--param", "padim.n_features=10")])
def test_a_key_no_selected_method_has_is_an_error(flag: str, key: str, synthetic_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_bench(synthetic_root, tmp_path / "res", flag, key)) == 2
    err = capsys.readouterr().err
    assert key.split("=")[0] in err and not (tmp_path / "res").exists()
    if "." not in key:
        assert "coreset_ratio" in err and "patch_size" in err  # the parameters of the selected method


def test_an_unscoped_key_one_selected_method_has_still_works(synthetic_root: Path) -> None:
    from flawmap.cli import build_parser, load_bench_study

    args = build_parser().parse_args(["bench", "--data", str(synthetic_root), "--methods", "patchcore,padim",
                                      "--param", "n_features=10"])
    study = load_bench_study(args)
    cfg = next(iter(study.experiments.values()))
    assert cfg.methods["padim"].params["n_features"] == 10 and "n_features" not in cfg.methods["patchcore"].params


@pytest.fixture(scope="module")
def finished(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data copy, results folder) of one finished one-run sweep."""
    base = tmp_path_factory.mktemp("bench_safety")
    data = base / "data"
    shutil.copytree(synthetic_root, data, ignore=shutil.ignore_patterns("texture"))
    out = base / "res"
    assert main(_bench(data, out)) == 0
    return data, out


def test_resume_redoes_runs_whose_dataset_changed(finished: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src_data, _ = finished
    data, out = tmp_path / "data", tmp_path / "res"
    shutil.copytree(src_data, data)
    assert main(_bench(data, out)) == 0
    capsys.readouterr()
    assert main(_bench(data, out)) == 0  # unchanged: nothing to do
    assert "1 already finished" in capsys.readouterr().out
    old = _rows(out)
    assert len(old) == 1 and old[0]["data_fingerprint"]
    old_scores = ResultStore(out / "results.sqlite").details()[old[0]["run_key"]]["scores"]
    # replace the training images with other pictures: same names, same count
    rng = np.random.default_rng(1)
    for f in sorted((data / "object" / "train" / "good").iterdir()):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(f)
    assert main(_bench(data, out)) == 0
    text = capsys.readouterr().out
    assert "0 already finished" in text and "dataset changed" in text
    new = _rows(out)
    assert len(new) == 1 and new[0]["run_key"] == old[0]["run_key"]
    assert new[0]["data_fingerprint"] != old[0]["data_fingerprint"]
    details = ResultStore(out / "results.sqlite").details()
    assert len(details) == 1 and details[new[0]["run_key"]]["scores"] != old_scores  # a new model, not the stale run


def test_a_second_bench_on_the_same_folder_says_it_is_busy(finished: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two processes: the first holds the results folder (as a running sweep does); the second stops
    at once with a clear message instead of computing and writing the same runs."""
    from flawmap.bench.sweep import LOCK_NAME

    data, _ = finished
    out = tmp_path / "res"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, flawmap.io as f\n"
         f"with f.exclusive_lock({str(out / LOCK_NAME)!r}, 'x'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_bench(data, out)) == 2
        err = capsys.readouterr().err
        assert "busy" in err and str(holder.pid) in err
        assert not (out / "results.sqlite").exists() and not (out / "results.csv").exists()
    finally:
        holder.communicate("", timeout=30)


def test_report_reads_a_read_only_store(finished: tuple[Path, Path], tmp_path: Path, readonly_dir,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, src_out = finished
    out = tmp_path / "readonly" / "res"  # inside the fixture's folder so it is cleaned up
    shutil.copytree(src_out, out, ignore=shutil.ignore_patterns("report"))
    before = {p.name for p in out.iterdir()}
    readonly_dir(out)
    assert main(["report", str(out), "-o", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file() and {p.name for p in out.iterdir()} == before
    capsys.readouterr()
    assert main(["report", str(out)]) == 2  # the default <out>/report cannot be written: one clear line
    err = capsys.readouterr().err
    assert "cannot write" in err and "not a flawmap results database" not in err


def test_bench_into_a_read_only_folder_is_one_line(synthetic_root: Path, readonly_dir,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ro = readonly_dir()
    assert main(_bench(synthetic_root, ro / "res")) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and len(err.strip().splitlines()) == 1


def test_full_disk_during_a_sweep_is_one_line(synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    def full(self, *a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ResultStore, "add", full)
    assert main(_bench(synthetic_root, tmp_path / "res")) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("flawmap bench: error: OperationalError: database or disk is full (unexpected; run with -v for "
                   "the traceback)")
