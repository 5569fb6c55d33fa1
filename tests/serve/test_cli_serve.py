"""`flawmap serve` command line: a bad model or setting is one line, exit 2, before any port is bound."""

from __future__ import annotations

import subprocess
import sys


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flawmap.cli", "serve", *args], capture_output=True, text=True, timeout=60)


def test_missing_model_is_one_line(tmp_path) -> None:
    r = _serve(str(tmp_path / "nope"), "--port", "0")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flawmap serve: error:") and "nope" in lines[0], r.stderr


def test_bad_settings_are_one_line(served_model) -> None:
    r = _serve(str(served_model.path), "--max-image-mb", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "flawmap serve: error: serve: max_image_mb must be a number > 0 (max_wait_ms, shutdown_timeout_s: >= 0); got 0.0"]
    r = _serve(str(served_model.path), "--max-batch", "0")
    assert r.returncode == 2 and "--max-batch" in r.stderr
