"""`flawmap predict model.onnx` (onnxruntime) writes the same scores, verdicts and overlays as the model folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from flawmap.cli import main
from flawmap.viz.heatmap import save_png


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "scores.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_predict_onnx_equals_model_folder(method: str, exported, model_dirs, tiny_data, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    x = tiny_data[1].images[:4].numpy()  # (4, 3, 64, 64) float in [0, 1]: good and defective test images
    for i, img in enumerate(x):
        save_png((img.transpose(1, 2, 0) * 255).round().astype(np.uint8), images / f"img{i}.png")
    assert main(["predict", str(model_dirs(method)), str(images), "--out", str(tmp_path / "torch")]) == 0
    assert main(["predict", str(exported(method)), str(images), "--out", str(tmp_path / "onnx")]) == 0
    ref, got = _rows(tmp_path / "torch"), _rows(tmp_path / "onnx")
    assert [r["path"] for r in got] == [r["path"] for r in ref] and len(got) == 4
    np.testing.assert_allclose([float(r["score"]) for r in got], [float(r["score"]) for r in ref], rtol=1e-4)
    assert all(r["anomalous"] in ("True", "False") for r in got)
    for r, s in zip(got, ref):  # verdicts agree unless a score sits at the threshold within rounding
        if abs(float(s["normalized_score"]) - 0.5) > 1e-3:
            assert r["anomalous"] == s["anomalous"]
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*_overlay.png")) == \
        sorted(p.name for p in (tmp_path / "torch").glob("*_overlay.png"))


def test_predict_onnx_bad_file_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    img = tmp_path / "a.png"
    save_png(np.zeros((32, 32, 3), np.uint8), img)
    assert main(["predict", str(bad), str(img), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.onnx" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()
