"""flawmap tune: Optuna trials scored on a stratified validation part of the test set, final figures on
the held-out rest; a shared storage continues the same study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flawmap.bench.tune import stratified_split
from flawmap.cli import main


def test_stratified_split_is_seeded_and_disjoint() -> None:
    labels = np.array([0] * 7 + [1] * 13)
    v, h = stratified_split(labels, 0.5, seed=3)
    v2, h2 = stratified_split(labels, 0.5, seed=3)
    assert np.array_equal(v, v2) and np.array_equal(h, h2)
    assert not set(v) & set(h) and len(v) + len(h) == 20
    assert labels[v].sum() in (6, 7) and (labels[v] == 0).sum() in (3, 4)  # per-label fraction
    assert not np.array_equal(v, stratified_split(labels, 0.5, seed=4)[0])
    v3, h3 = stratified_split(np.array([0, 0, 1, 1]), 0.1, seed=0)
    assert len(v3) == 2 and len(h3) == 2  # at least one image of each label in each part


def test_tune_two_trials_then_resume(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tune", "--data", str(synthetic_root), "--categories", "object", "--method", "patchcore",
            "--param", "backbone=efficientnet_lite0", "--resize", "64", "--crop", "0", "--max-train", "4",
            "--search", "coreset_ratio=float:0.05:0.5:log", "--search", "patch_size=[1,3]",
            "--trials", "2", "--out", str(tmp_path), "--study-name", "t"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "VALIDATION split of 4 test images" in out and "remaining 4 held-out test images only" in out
    assert "trial 0:" in out and "trial 1:" in out
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["n_trials"] == 2 and summary["storage"].startswith("sqlite:///")
    assert summary["objective_split"]["n_images"] == 4 and summary["final_split"]["n_images"] == 4
    best = summary["best"]["params"]
    assert 0.05 <= best["coreset_ratio"] <= 0.5 and best["patch_size"] in (1, 3)
    assert summary["final"]["object"]["image_auroc"] is not None
    assert (tmp_path / "optuna.sqlite").is_file() and (tmp_path / "feature_cache").is_dir()
    # a second worker on the same storage and study name continues the study
    assert main([*args[:-6], "--trials", "1", "--out", str(tmp_path), "--study-name", "t"]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["n_trials"] == 3


def test_tune_errors_list_allowed(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["tune", "--data", str(synthetic_root), "--out", str(tmp_path), "--trials", "1"]
    assert main([*base, "--search", "coreset=[1,2]"]) == 2
    assert "allowed: backbone" in capsys.readouterr().err
    assert main([*base, "--metric", "accuracy"]) == 2
    assert "allowed values: image_auroc" in capsys.readouterr().err
    cfg = tmp_path / "t.yaml"
    cfg.write_text("method: patchcore\nsearch: {patch_size: {type: discrete, choices: [1, 3]}}\n")
    assert main(["tune", str(cfg), "--data", str(synthetic_root), "--out", str(tmp_path)]) == 2
    assert "allowed values: float, int, categorical" in capsys.readouterr().err
