"""Lint and types are part of the test run: ruff and mypy with their settings in pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    res = _run(str(Path(sys.executable).with_name("ruff")), "check", "--no-cache", "src", "tests")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_is_clean() -> None:
    """On the files listed under [tool.mypy] (base, model file, registry, factory, params, detectors, deploy, serve)."""
    res = _run(sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull)
    assert res.returncode == 0, res.stdout + res.stderr
