"""`flawmap serve` command line: a bad model or setting is one line, exit 2, before any port is bound."""

from __future__ import annotations

import pytest

from flawmap.cli import main


def test_missing_model_is_one_line(tmp_path, capsys) -> None:
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("flawmap serve: error:") and "nope" in lines[0], err


def test_bad_settings_are_one_line(served_model, capsys) -> None:
    assert main(["serve", str(served_model.path), "--max-image-mb", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "flawmap serve: error: serve: max_image_mb must be a number > 0 (max_wait_ms, shutdown_timeout_s: >= 0); got 0.0"]
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(served_model.path), "--max-batch", "0"])
    assert exc.value.code == 2 and "--max-batch" in capsys.readouterr().err
