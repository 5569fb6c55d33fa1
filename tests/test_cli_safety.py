"""Nothing lost, nothing silent. The CLI on hostile input: outputs it must not destroy or
mix, values it must refuse up front, and one clear line instead of a traceback."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flawmap.cli import main

FAST = ["--param", "backbone=efficientnet_lite0", "--resize", "64", "--crop", "0"]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fit_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--data", str(root), "--category", "object", "--out", str(out), *FAST, *extra]


@pytest.fixture(scope="module")
def model(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "model"
    assert main(_fit_args(synthetic_root, out)) == 0
    return out


def _no_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from flawmap.base import BaseDetector

    def fail(self, images):
        raise AssertionError("fit must not start")

    monkeypatch.setattr(BaseDetector, "fit", fail)


# ---- 1. fit --out never deletes what flawmap did not write ---------------------------------------
def test_fit_refuses_a_non_model_folder_which_survives_byte_identical(
        synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "thesis.tex").write_text("x\n")
    (proj / "src" / "main.py").write_text("print(1)\n")
    (proj / "config.json").write_text("{}")  # looks a bit like a model: still not one
    before = _tree(proj)
    _no_fit(monkeypatch)
    for extra in ([], ["--force"]):
        assert main(_fit_args(synthetic_root, proj, *extra)) == 2
        assert "refusing to overwrite" in capsys.readouterr().err
    assert _tree(proj) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]  # no hidden temp or .old folders


def test_fit_refuses_a_file_at_out(synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    _no_fit(monkeypatch)
    assert main(_fit_args(synthetic_root, f, "--force")) == 2
    assert "not a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_fit_replaces_an_existing_model_only_with_force(synthetic_root: Path, model: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "m"
    shutil.copytree(model, m)
    before = _tree(m)
    assert main(_fit_args(synthetic_root, m)) == 2
    assert "--force" in capsys.readouterr().err and _tree(m) == before
    assert main(_fit_args(synthetic_root, m, "--force", "--target-fpr", "0.05")) == 0
    cfg = json.loads((m / "config.json").read_text())
    assert cfg["extra"]["calibration"]["target_fpr"] == 0.05 and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_killed_after_the_swap_leaves_a_loadable_model(model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import flawmap.io as fio
    from flawmap.base import load_detector

    m = tmp_path / "m"
    shutil.copytree(model, m)
    det = load_detector(m)

    def killed(*a, **k):
        raise SystemExit("killed")

    monkeypatch.setattr(fio.shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        det.save(m, extra={"note": "new"})
    monkeypatch.undo()
    assert json.loads((m / "config.json").read_text())["extra"] == {"note": "new"}
    load_detector(m)


# ---- 2. predict never mixes two runs' files -------------------------------------------------------
def test_predict_failure_in_a_later_batch_keeps_the_previous_output(model: Path, synthetic_root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    good = sorted((synthetic_root / "object" / "test" / "good").iterdir())
    out = tmp_path / "heat"
    assert main(["predict", str(model), *map(str, good), "--out", str(out)]) == 0
    before = _tree(out)
    assert len(before) == len(good) + 1
    bad = tmp_path / "in" / "zz_corrupt.png"
    bad.parent.mkdir()
    bad.write_bytes(good[0].read_bytes()[:150])
    code = main(["predict", str(model), str(good[0]), str(good[1]), str(bad), "--batch-size", "1", "--out", str(out)])
    assert code == 2 and "zz_corrupt.png" in capsys.readouterr().err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat", "in"]


def test_predict_replaces_its_own_output_and_refuses_other_folders(model: Path, synthetic_root: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    good = sorted((synthetic_root / "object" / "test" / "good").iterdir())
    out = tmp_path / "heat"
    assert main(["predict", str(model), *map(str, good), "--out", str(out)]) == 0
    assert main(["predict", str(model), str(good[0]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 1 and sorted(_tree(out)) == sorted(["scores.csv", rows[0]["overlay"]])  # old overlays gone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(good[0].read_bytes())
    capsys.readouterr()
    assert main(["predict", str(model), str(good[0]), "--out", str(mine)]) == 2
    assert "refusing" in capsys.readouterr().err and sorted(_tree(mine)) == ["holiday.png"]


# ---- 5. values refused up front --------------------------------------------------------------------
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_fit_refuses_non_finite_params_before_fitting(value: str, synthetic_root: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _no_fit(monkeypatch)
    assert main(_fit_args(synthetic_root, tmp_path / "m", "--param", f"coreset_ratio={value}")) == 2
    assert "coreset_ratio" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_every_float_parameter_of_every_method_refuses_nan_and_inf() -> None:
    from flawmap.errors import ConfigError
    from flawmap.registry import detector_class, list_detectors

    checked = 0
    for name in list_detectors():
        cls = detector_class(name)
        for k, v in cls.default_params().items():
            if isinstance(v, float):
                for bad in (math.nan, math.inf):
                    with pytest.raises(ConfigError, match=k):
                        cls(**{k: bad}).validate_params()
                    checked += 1
    assert checked >= 10


@pytest.mark.parametrize("argv, words", [
    (["fit", "--data", "D", "--category", "c", "--out", "o", "--resize", "0"], "resize"),
    (["bench", "--max-train", "-1"], "--max-train"),
    (["predict", "M", "x.png", "--batch-size", "0"], "--batch-size"),
    (["predict", "M", "x.png", "--batch-size", "-2"], "--batch-size"),
])
def test_bad_numbers_are_one_clear_line(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage error
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


@pytest.mark.parametrize("size", [(8, 8), (1, 1), (4000, 10)])
def test_tiny_images_are_refused(size: tuple[int, int], model: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / f"tiny_{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (120, 80, 40)).save(f)
    assert main(["predict", str(model), str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f.name in err and "at least 16 px" in err and not (tmp_path / "o").exists()


def test_stretched_images_are_warned_about(model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 200, 3), dtype=np.uint8)).save(f)
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(model), str(f), "--out", str(tmp_path / "o")]) == 0
    assert any("stretched" in r.message and "wide.png" in r.message for r in caplog.records)


# ---- 6. masks -------------------------------------------------------------------------------------
def test_grey_and_orphan_masks_are_warned_once(synthetic_root: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from flawmap.data import Transform, load_split, scan_category

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    gt = root / "object" / "ground_truth" / "scratch"
    grey = sorted(gt.iterdir())[0]
    m = np.asarray(Image.open(grey)).copy()
    m[m > 0] = np.linspace(60, 255, int((m > 0).sum())).astype(np.uint8)  # anti-aliased / grey levels
    Image.fromarray(m).save(grey)
    orphan = gt / "999_mask.png"
    shutil.copy(sorted(gt.iterdir())[1], orphan)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            load_split(scan_category(root, "object"), "test", Transform(resize=64))
    grey_msgs = [r.message for r in caplog.records if "not binary" in r.message]
    orphan_msgs = [r.message for r in caplog.records if "belong to no test image" in r.message]
    assert len(grey_msgs) == 1 and grey.name in grey_msgs[0] and "0/255" in grey_msgs[0]
    assert len(orphan_msgs) == 1 and orphan.name in orphan_msgs[0]
    assert not any(grey.name in r.message for r in caplog.records if "belong" in r.message)


# ---- 8. read-only output, full disk, edited model files ------------------------------------------
def test_fit_to_a_read_only_folder_fails_before_fitting(synthetic_root: Path, readonly_dir,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ro = readonly_dir()
    _no_fit(monkeypatch)
    assert main(_fit_args(synthetic_root, ro / "model")) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


def test_predict_to_a_read_only_folder_is_one_line(model: Path, synthetic_root: Path, readonly_dir,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ro = readonly_dir()
    one = next((synthetic_root / "object" / "test" / "good").iterdir())
    assert main(["predict", str(model), str(one), "--out", str(ro / "heat")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and len(err.strip().splitlines()) == 1


def test_full_disk_during_save_is_one_line_and_leaves_nothing(synthetic_root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import flawmap.model_file

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flawmap.model_file, "save_file", full)
    assert main(_fit_args(synthetic_root, tmp_path / "m")) == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "-v" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def _edit(model: Path, dst: Path, how: str) -> Path:
    shutil.copytree(model, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if how == "transform":
        cfg["extra"]["transform"] = "abc"
    elif how == "threshold":
        cfg["extra"]["threshold"] = "high"
    elif how == "params_list":
        cfg["params"] = list(cfg["params"].items())
    elif how == "backbone":
        cfg["params"]["backbone"] = "efficientnet_lite2"
    elif how == "bad_value":
        cfg["params"]["coreset_ratio"] = 7
    elif how == "tensor_shape":
        from safetensors.torch import load_file, save_file

        t = load_file(str(dst / "model.safetensors"))
        t = {k: v.reshape(-1)[: max(1, v.numel() // 2)].clone() if v.ndim >= 1 else v for k, v in t.items()}
        save_file(t, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("how, words", [
    ("transform", "'extra.transform'"), ("threshold", "'extra.threshold'"), ("params_list", "'params'"),
    ("bad_value", "coreset_ratio"), ("backbone", "do not fit the parameters"), ("tensor_shape", "tensors"),
])
def test_hand_edited_model_config_names_the_field(how: str, words: str, model: Path, synthetic_root: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _edit(model, tmp_path / "m", how)
    one = next((synthetic_root / "object" / "test" / "good").iterdir())
    assert main(["predict", str(m), str(one), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---- 9. unexpected errors: one line unless -v ------------------------------------------------------
def test_unexpected_error_is_one_line_unless_verbose(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import flawmap.cli

    def boom(args):
        raise RuntimeError("something odd\nsecond line")

    monkeypatch.setattr(flawmap.cli, "cmd_list", boom)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("flawmap list: error: RuntimeError: something odd (unexpected; run with -v for the "
                           "traceback)")
    assert main(["-v", "list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: something odd" in err

