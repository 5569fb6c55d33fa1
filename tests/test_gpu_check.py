"""benchmarks/gpu_check.sh in its CI-sized form (--device cpu --small, synthetic data): so the GPU check
script cannot rot between the rare runs on a CUDA machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO


def _gpu_check(tmp_path, *flags: str) -> dict:
    """Run gpu_check.sh --device cpu --small --no-install --data synthetic FLAGS; -> gpu_check.json."""
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable, "FLAWMAP_NO_PROGRESS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--device", "cpu", "--small", "--no-install",
         "--data", "synthetic", *flags], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


@pytest.mark.timeout(300)
def test_gpu_check_small_on_cpu(tmp_path) -> None:
    out = tmp_path / "results"
    result = _gpu_check(tmp_path, "--contract-k", "test_all_methods_registered")
    assert result["contract"].startswith("passed on cpu: 1 passed")
    runs = {r["method"]: r for r in result["runs"]}
    assert sorted(runs) == ["fastflow", "padim", "patchcore", "riad", "spade"]
    for name, r in runs.items():
        assert r["device"] == "cpu" and r["fit_s"] > 0 and r["predict_ms_per_image"] > 0, r
        assert 0 <= r["image_auroc"] <= 1 and 0 <= r["pixel_auroc"] <= 1 and 0 <= r["aupro"] <= 1, r
    assert runs["fastflow"]["epochs"] == runs["riad"]["epochs"] == 1 and runs["riad"]["s_per_epoch"] > 0
    table = (out / "gpu_check.md").read_text()
    assert "| method | device | epochs | fit s | s/epoch | predict ms/image |" in table and "| spade | cpu |" in table


@pytest.mark.timeout(300)
def test_gpu_check_with_a_preset(tmp_path) -> None:
    """--preset fast reaches the detectors (held-out split, early stopping) and is recorded with each run."""
    result = _gpu_check(tmp_path, "--contract-k", "none", "--methods", "fastflow", "--preset", "fast",
                        "--epochs-fastflow", "3", "--train-budget-s", "100")
    assert result["environment"]["preset"] == "fast"
    (run,) = result["runs"]
    assert run["method"] == "fastflow" and run["epochs"] == run["epoch_cap"] == 3 and run["stopped_early"] is False, run
