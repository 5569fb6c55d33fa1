"""The layers of docs/architecture.md are a checked fact: `lint-imports` with the contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the flawmap source under ``root/src`` with ``root/pyproject.toml`` (not an installed copy)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_are_kept() -> None:
    res = lint_imports(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    with (root / "src" / "flawmap" / "registry.py").open("a") as f:
        f.write("\n\ndef _upward():\n    from .factory import get_detector  # a function-local import counts too\n")
    res = lint_imports(root)
    assert res.returncode != 0
    assert "flawmap.registry is not allowed to import flawmap.factory" in res.stdout


def test_a_circle_inside_a_package_breaks_the_contract(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    with (root / "src" / "flawmap" / "deploy" / "backend.py").open("a") as f:
        f.write("\n\nfrom . import predictor  # noqa: E402\n")
    res = lint_imports(root)
    assert res.returncode != 0
    assert "No cycles are allowed in flawmap.deploy" in res.stdout
