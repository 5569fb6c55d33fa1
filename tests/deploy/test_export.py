"""`flawmap export`: ONNX graphs equal to the PyTorch model (synthetic and real bottle images), dynamic
batch, the errors the issue names, and atomic output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import flawmap.deploy.export as export
from flawmap.cli import main
from flawmap.data import Transform, load_image, scan_category
from flawmap.deploy.predictor import TorchPredictor, open_predictor
from flawmap.errors import ConfigError, ModelFileError, OutputError

from ..conftest import MVTEC_ROOT
from .conftest import fit_and_save, rel_err

TOL = 1e-4


def _assert_equal_outputs(onnx_path: Path, model_dir: Path, x: np.ndarray) -> None:
    ref, got = TorchPredictor(model_dir, device="cpu"), open_predictor(onnx_path)
    for b in (1, 3):  # the file was traced at batch 2: the batch axis is dynamic
        (s_ref, m_ref), (s_got, m_got) = ref.raw(x[:b]), got.raw(x[:b])
        assert s_got.shape == (b,) and m_got.shape == (b, *x.shape[2:])
        np.testing.assert_allclose(s_got, s_ref, rtol=TOL, atol=0)
        assert rel_err(m_got, m_ref) <= TOL


@pytest.mark.parametrize("method", export.EXPORTABLE)
def test_export_equals_pytorch_on_synthetic_images(method: str, exported, model_dirs, tiny_data) -> None:
    x = tiny_data[1].images[:3].numpy()  # unseen test images (good and defective)
    _assert_equal_outputs(exported(method), model_dirs(method), x)


def _bottle_root() -> Path:
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.fail(f"real MVTec data missing: expected {MVTEC_ROOT / 'bottle'} (set FLAWMAP_MVTEC_ROOT to the MVTec AD root)")
    return MVTEC_ROOT


@pytest.mark.parametrize("method", export.EXPORTABLE)
def test_export_equals_pytorch_on_real_bottle(method: str, tmp_path: Path) -> None:
    data = scan_category(_bottle_root(), "bottle")
    tf = Transform(resize=144, crop=128)  # a crop too, so the stored transform is exercised
    train = torch.from_numpy(np.stack([tf.to_array(load_image(s.path)) for s in data.train[:6]]))
    test = [load_image(s.path) for s in (data.test[0], data.test[30], data.test[-1])]  # defects and a good one
    model = fit_and_save(method, train, train[:2], tmp_path / "m", tf, coreset_ratio=0.05) if method == "patchcore" \
        else fit_and_save(method, train, train[:2], tmp_path / "m", tf)
    out = export.export_model(model, tmp_path / "m.onnx")
    pred = open_predictor(out)
    x = pred.preprocess(test)  # the shared preprocessing, numpy only
    assert x.shape == (3, 3, 128, 128)
    _assert_equal_outputs(out, model, x)


def test_export_check_catches_a_graph_that_differs(model_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export.graph_forward

    def off_by_one_percent(det):
        f = real(det)
        return lambda x: (lambda s, m: (s, m * 1.01))(*f(x))

    monkeypatch.setattr(export, "graph_forward", off_by_one_percent)
    with pytest.raises(ModelFileError, match="export check failed.*maps"):
        export.export_model(model_dirs("padim"), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_model_too_large_for_one_onnx_file(model_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "MAX_TENSOR_BYTES", 1 << 20)  # the real limit is protobuf's 2 GiB
    with pytest.raises(ConfigError, match="protobuf limit.*coreset_ratio"):
        export.export_model(model_dirs("patchcore"), tmp_path / "big.onnx")
    assert list(tmp_path.iterdir()) == []


def test_model_without_calibration_exports(tiny_data, tmp_path: Path) -> None:
    model = fit_and_save("padim", tiny_data[0].images, tiny_data[0].images, tmp_path / "m", calibration=False)
    pred = open_predictor(export.export_model(model, tmp_path / "m.onnx"))
    assert pred.calibration is None and pred.card["calibration"] is None
    v = pred.decide(pred.raw(tiny_data[1].images[:1].numpy())[0])[0]
    assert v.anomalous is None and v.normalized_score is None


# ---- the command line -------------------------------------------------------------------------------
def test_cli_export_writes_a_runnable_file(model_dirs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "model.onnx"
    assert main(["export", str(model_dirs("padim")), "--format", "onnx", "-o", str(out)]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    assert open_predictor(out).method == "padim"
    assert main(["export", str(model_dirs("padim")), "-o", str(out)]) == 2  # exists: --force needed
    assert "already a flawmap ONNX export; pass --force" in capsys.readouterr().err
    assert main(["export", str(model_dirs("padim")), "-o", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_export_refuses_a_method_that_cannot_be_exported(tiny_data, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = fit_and_save("spade", tiny_data[0].images, tiny_data[0].images, tmp_path / "spade", calibration=False)
    assert main(["export", str(model), "-o", str(tmp_path / "spade.onnx")]) == 2
    line = _err_line(capsys)
    assert line.startswith("flawmap export: error: method 'spade'")
    assert "exportable methods: fastflow, padim, patchcore" in line
    assert not (tmp_path / "spade.onnx").exists()


@pytest.mark.parametrize("argv,msg", [
    (["--format", "tflite"], "export format 'tflite' is not supported; allowed: onnx"),
    (["-o", "{tmp}/model.pt"], "must end in .onnx"),
    (["-o", "{tmp}/notes.onnx"], "is not a flawmap ONNX export; refusing to overwrite it"),
    (["-o", "{tmp}/notes.onnx", "--force"], "is not a flawmap ONNX export; refusing to overwrite it"),
    (["-o", "{tmp}/folder.onnx"], "exists and is not a file"),
])
def test_cli_export_bad_output_or_format(argv: list[str], msg: str, model_dirs, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.onnx").write_text("my notes")
    (tmp_path / "folder.onnx").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "m.onnx")]
    assert main(["export", str(model_dirs("padim")), *argv]) == 2
    assert msg in _err_line(capsys)
    assert (tmp_path / "notes.onnx").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx", "notes.onnx"]


def test_cli_export_not_a_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "is not a flawmap model folder" in _err_line(capsys)


def test_failed_export_leaves_nothing_and_keeps_the_old_file(model_dirs, exported, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    shutil.copy(exported("padim"), out)
    before = out.read_bytes()
    real = Path.write_bytes

    def half_then_disk_full(self: Path, data: bytes) -> int:  # the write dies half-way
        real(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_disk_full)
    assert main(["export", str(model_dirs("padim")), "-o", str(out), "--force"]) == 2
    assert f"cannot write {out}: No space left on device; nothing was written" in _err_line(capsys)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    monkeypatch.undo()
    fresh = tmp_path / "new.onnx"
    monkeypatch.setattr(export, "_check", lambda *a: (_ for _ in ()).throw(OutputError("simulated failure")))
    assert main(["export", str(model_dirs("padim")), "-o", str(fresh)]) == 2
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("params", [
    {"backbone": ("efficientnet_lite0", "mobilenet_v2"), "test_rotations": 3},  # quarter turns: rot90
    {"test_rotations": 1, "train_rotations": 7},  # a 45-degree bank, half turns at test time
])
def test_patchcore_rotations_and_ensembles_export(params: dict, tiny_data, tmp_path: Path) -> None:
    train, test = tiny_data
    model = fit_and_save("patchcore", train.images[:6], train.images[6:], tmp_path / "m", **params)
    ref, got = TorchPredictor(model, device="cpu"), open_predictor(export.export_model(model, tmp_path / "m.onnx"))
    x = test.images[:3].numpy()
    (s_ref, m_ref), (s_got, m_got) = ref.raw(x), got.raw(x)
    assert rel_err(s_got, s_ref) < 1e-3 and rel_err(m_got, m_ref) < 1e-3
