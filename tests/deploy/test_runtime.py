"""The ONNX runtime path: no torch at import or at prediction, open_predictor("x.onnx") end to end,
and one clear ModelFileError for every bad file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flawmap.data import load_image
from flawmap.deploy.predictor import TorchPredictor, open_predictor
from flawmap.deploy.runtime import METADATA_KEY, OnnxPredictor, read_metadata
from flawmap.errors import DataError, ModelFileError


def test_runtime_imports_and_runs_without_torch(exported, tiny_data) -> None:
    code = (
        "import sys\n"
        "import flawmap.deploy.runtime, flawmap.deploy.predictor\n"
        "assert 'torch' not in sys.modules, 'import pulled in torch'\n"
        "from flawmap.data import load_image\n"
        "from flawmap.deploy.predictor import open_predictor\n"
        f"pred = open_predictor({str(exported('patchcore'))!r})\n"
        f"x = pred.preprocess([load_image(p) for p in {[str(p) for p in tiny_data[1].paths[:2]]!r}])\n"
        "scores, maps = pred.raw(x)\n"
        "print(len(pred.decide(scores)), maps.shape)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'onnx'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "(2,", "64,", "64)"]


def test_open_predictor_onnx_end_to_end(exported, model_dirs, tiny_data) -> None:
    images = [load_image(p) for p in tiny_data[1].paths]  # files -> uint8 -> the stored preprocessing
    ref, got = TorchPredictor(model_dirs("padim"), device="cpu"), open_predictor(exported("padim"))
    assert isinstance(got, OnnxPredictor)
    x = got.preprocess(images)
    np.testing.assert_array_equal(x, ref.preprocess(images))
    np.testing.assert_array_equal(x, tiny_data[1].images.numpy())  # the same function the data loader uses
    (s_ref, _), (s_got, m_got) = ref.raw(x), got.raw(x)
    assert m_got.shape == (len(images), 64, 64)
    np.testing.assert_allclose(s_got, s_ref, rtol=1e-4)
    assert got.decide(s_ref) == ref.decide(s_ref)  # the same decision rule
    thr = ref.calibration.image_threshold
    clear = np.abs(s_ref - thr) > 1e-3 * abs(thr)  # the calibration images' maximum sits at the threshold
    assert clear.sum() >= 5
    assert [v.anomalous for v in got.decide(s_got[clear])] == [v.anomalous for v in ref.decide(s_ref[clear])]
    assert got.calibration == ref.calibration and got.transform == ref.transform
    for key in ("method", "params", "backbone", "preprocessing", "input_size", "calibration", "flawmap_version"):
        assert got.card[key] == ref.card[key], key
    assert got.card["format"] == "onnx" and "CPUExecutionProvider" in got.card["providers"]


def test_wrong_input_shape_is_a_data_error(exported) -> None:
    pred = open_predictor(exported("padim"))
    with pytest.raises(DataError, match=r"expected images \(N, 3, 64, 64\); got \(1, 3, 32, 32\)"):
        pred.raw(np.zeros((1, 3, 32, 32), np.float32))


def _one_line(exc: pytest.ExceptionInfo[BaseException], path: Path, match: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and match in msg, msg


def test_missing_or_corrupt_file(exported, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as exc:
        OnnxPredictor(tmp_path / "none.onnx")
    _one_line(exc, tmp_path / "none.onnx", "no such ONNX file")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf\xff" * 100)
    truncated = tmp_path / "truncated.onnx"
    data = exported("padim").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for bad in (garbage, truncated):
        with pytest.raises(ModelFileError) as exc:
            open_predictor(bad)
        _one_line(exc, bad, "not a readable ONNX model")


def _rewrite(src: Path, dst: Path, meta: str | None) -> Path:
    """A copy of an export with its flawmap metadata replaced (None: removed)."""
    import onnx

    model = onnx.load(str(src))
    del model.metadata_props[:]
    if meta is not None:
        model.metadata_props.add(key=METADATA_KEY, value=meta)
    onnx.save(model, str(dst))
    return dst


def test_missing_metadata(exported, tmp_path: Path) -> None:
    bare = _rewrite(exported("padim"), tmp_path / "bare.onnx", None)
    for read in (OnnxPredictor, read_metadata):
        with pytest.raises(ModelFileError) as exc:
            read(bare)
        _one_line(exc, bare, "no flawmap metadata in the ONNX file")


@pytest.mark.parametrize("change,match", [
    (lambda m: "{not json", "not valid JSON"),
    (lambda m: {**m, "format": "other"}, "not of format 'flawmap-onnx'"),
    (lambda m: {**m, "format_version": 99}, "export format version 99"),
    (lambda m: {**m, "method": None}, "metadata field 'method'"),
    (lambda m: {**m, "input_size": [32]}, "metadata field 'input_size'"),
    (lambda m: {**m, "input_size": [32, 32], "transform": {"resize": 32, "crop": None}}, "metadata do not match the graph"),
    (lambda m: {**m, "transform": {"resize": 80, "crop": None}}, "metadata do not match: the transform gives (80, 80)"),
    (lambda m: {**m, "transform": {"resize": 64, "colour": 1}}, "metadata field 'transform' is invalid"),
    (lambda m: {**m, "calibration": {"kind": "held_out_fpr"}}, "calibration: missing or invalid field"),
])
def test_metadata_that_does_not_match(change, match: str, exported, tmp_path: Path) -> None:
    meta = read_metadata(exported("padim"))
    new = change(meta)
    bad = _rewrite(exported("padim"), tmp_path / "bad.onnx", new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(ModelFileError) as exc:
        open_predictor(bad)
    _one_line(exc, bad, match)


def test_letterboxed_model_same_arrays_in_predictor_and_runtime(tiny_data, tmp_path: Path) -> None:
    """A model fitted with aspect "pad": the folder and its ONNX export preprocess non-square images with the one
    Transform (to_array), record it in their cards, and score alike."""
    from flawmap.data import Transform
    from flawmap.deploy.export import export_model

    from .conftest import fit_and_save

    tf = Transform(64, None, "pad")
    train, test = tiny_data
    folder = fit_and_save("padim", train.images, test.images[:4], tmp_path / "padim", tf=tf, calibration=False)
    ref, got = TorchPredictor(folder, device="cpu"), open_predictor(export_model(folder, tmp_path / "padim.onnx"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 80), (128, 64), (51, 100), (64, 64))]
    x = got.preprocess(images)
    np.testing.assert_array_equal(x, ref.preprocess(images))
    np.testing.assert_array_equal(x, np.stack([tf.to_array(im) for im in images]))
    assert (x[0][:, :16] == 0).all() and (x[1][:, :, :16] == 0).all()  # the letterbox margins
    assert got.transform == ref.transform == tf
    assert got.card["preprocessing"] == ref.card["preprocessing"] == {"resize": 64, "crop": None, "aspect": "pad"}
    np.testing.assert_allclose(got.raw(x)[0], ref.raw(x)[0], rtol=1e-4)
