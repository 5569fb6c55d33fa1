"""A sweep killed with SIGKILL mid-way resumes: no finished result lost, none duplicated, the rest done."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAST = ["--param", "backbone=efficientnet_lite0", "--resize", "64", "--crop", "0", "--max-train", "4"]
RATIOS = [0.02, 0.1, 0.3, 0.5]


def _finished(db: Path) -> dict[str, str]:
    if not db.is_file():
        return {}
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return {k: v for k, v in con.execute("SELECT run_key, row_json FROM runs")}
        finally:
            con.close()
    except sqlite3.OperationalError:  # table not created yet
        return {}


def test_sigkill_mid_sweep_then_resume(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    db = out / "results.sqlite"
    cmd = [sys.executable, "-m", "flawmap.cli", "--no-progress", "bench", "--data", str(synthetic_root),
           "--categories", "object", "--methods", "patchcore",
           "--grid", f"coreset_ratio=[{','.join(map(str, RATIOS))}]", "--out", str(out), *FAST]
    env = {**os.environ, "FLAWMAP_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and not _finished(db):
            time.sleep(0.02)
        assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = _finished(db)
    assert 1 <= len(before) < len(RATIOS), len(before)

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(before)} already finished" in res.stdout
    after = _finished(db)
    assert len(after) == len(RATIOS)  # the rest finished
    for key, row in before.items():
        assert after[key] == row  # finished results kept as they were
    con = sqlite3.connect(db)
    n_rows = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    n_details = con.execute("SELECT COUNT(*) FROM details").fetchone()[0]
    con.close()
    assert n_rows == n_details == len(RATIOS)  # nothing duplicated, every run with its details
    rows = [json.loads(r) for r in after.values()]
    assert sorted(r["coreset_ratio"] for r in rows) == RATIOS
    for r in rows:  # a stored run always has its gallery, and no temporary folder is left behind
        assert len(list((out / "artifacts" / r["run_key"]).glob("*.png"))) == 6
    leftovers = [p.name for p in (out / "artifacts").iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in n for n in leftovers)  # at most the folder of the killed run, never a stored one
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(RATIOS)


def test_a_trained_fit_interrupted_before_its_group_is_stored_resumes_from_its_checkpoint(
        synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sweep's training fit writes checkpoints under RunOptions.checkpoints / fit_key; stopped before its
    group was stored, the same spec run again resumes instead of retraining (same scores); once every run
    of the group is out, the checkpoint folder is removed and the row shows the spec's own checkpoint_dir."""
    import logging

    import numpy as np

    from flawmap.bench.runner import RunOptions, RunSpec, run_group

    tiny = {"image_size": 32, "grid_sizes": [2, 4], "base_channels": 4, "depth": 2, "epochs": 2, "batch_size": 4}
    spec = RunSpec("riad", "object", str(synthetic_root), tiny, max_train=4)
    options = RunOptions(gallery=0, details=False, checkpoints=str(tmp_path / "ck"))
    folder = tmp_path / "ck" / spec.fit_key()
    first = run_group([spec], options=options)
    out1, res1, _ = next(first)  # fitted and evaluated, then interrupted before the group ends
    first.close()
    assert (folder / "checkpoint.json").is_file()
    assert out1.row["checkpoint_dir"] is None
    with caplog.at_level(logging.INFO, logger="flawmap.components.training"):
        (out2, res2, _), = list(run_group([spec], options=options))
    assert "resuming from" in caplog.text and "after epoch 2" in caplog.text
    np.testing.assert_array_equal(res1.scores, res2.scores)
    assert out2.row["checkpoint_dir"] is None and not folder.exists()
    assert (out2.row["trained_epochs"], out2.row["stopped_early"]) == (2, False)


def test_no_checkpoints_for_methods_without_training_or_when_off(synthetic_root: Path, tmp_path: Path) -> None:
    from flawmap.bench.runner import RunOptions, RunSpec, run_group

    spec = RunSpec("padim", "object", str(synthetic_root), {"backbone": "efficientnet_lite0"}, resize=64, crop=0,
                   max_train=4)
    (out, _, _), = list(run_group([spec], options=RunOptions(gallery=0, details=False,
                                                             checkpoints=str(tmp_path / "ck"))))
    assert not (tmp_path / "ck").exists()
    assert "trained_epochs" not in out.row  # no training, no epochs column
    tiny = {"image_size": 32, "grid_sizes": [2, 4], "base_channels": 4, "depth": 2, "epochs": 1, "batch_size": 4}
    spec = RunSpec("riad", "object", str(synthetic_root), tiny, max_train=4)
    (out, _, _), = list(run_group([spec], options=RunOptions(gallery=0, details=False)))
    assert out.row["checkpoint_dir"] is None and not (tmp_path / "ck").exists()
