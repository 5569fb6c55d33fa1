"""`flawmap fit --train DIR` on a plain folder of good images, the held-out calibration it stores,
`predict` verdicts on top of it, and every bad input of these commands (one line, exit 2, nothing written)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flawmap.cli import main

FAST = ["--param", "backbone=efficientnet_lite0", "--resize", "32", "--crop", "0"]


def _good(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth grey gradient with mild noise: the 'good part'."""
    base = np.linspace(60, 190, w)[None, :].repeat(h, 0)
    img = base[..., None].repeat(3, 2) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_images(folder: Path, n: int, seed: int = 0, defect: bool = False) -> list[Path]:
    """n images of mixed sizes and formats, some in a sub-folder."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (40, 40) if i % 3 else (48, 36)
        img = _good(rng, h, w)
        if defect:
            img[10:22, 10:22] = (255, 0, 0)
        sub = folder / "line2" if i % 4 == 3 else folder
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:03d}.{'jpg' if i % 5 == 4 else 'png'}"
        Image.fromarray(img).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parts")
    _write_images(root / "good", 14, seed=0)
    _write_images(root / "val_good", 9, seed=1)
    _write_images(root / "val_bad", 4, seed=2, defect=True)
    return {k: root / k for k in ("good", "val_good", "val_bad")}


@pytest.fixture(scope="module")
def model(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "model"
    assert main(["fit", "--train", str(folders["good"]), "--out", str(out), *FAST]) == 0
    return out


def _calibration(model: Path) -> dict:
    return json.loads((model / "config.json").read_text())["extra"]["calibration"]


def _one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("flawmap ") and all(w in err for w in words), err
    return err


def _nothing_written(parent: Path, name: str = "m") -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}")]  # no hidden temporary folder


def _no_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from flawmap.base import BaseDetector

    def fail(self, images):
        raise AssertionError("fit must not start")

    monkeypatch.setattr(BaseDetector, "fit", fail)


# ---- fit on a folder: held-out calibration ---------------------------------------------------------
def test_fit_on_a_folder_holds_out_calibration_images(model: Path, folders: dict[str, Path]) -> None:
    extra = json.loads((model / "config.json").read_text())["extra"]
    cal = extra["calibration"]
    # 14 images, 15% -> 2, raised to the minimum of 8 (whole groups: at least 8); the rest train (recursive,
    # png + jpg, mixed sizes)
    n = cal["n_images"]
    assert 8 <= n <= 12 and extra["n_train"] == 14 - n and extra["train"] == str(folders["good"])
    assert cal["target_fpr"] == 0.01 and cal["guaranteed_fpr"] == pytest.approx(1 / (n + 1))
    assert len(cal["scores"]) == n and cal["image_threshold"] > max(cal["scores"])  # too few: above the max
    assert f"{n} of 14" in cal["source"] and "seed 0" in cal["source"] and "group-by auto" in cal["source"]
    assert extra["transform"] == {"resize": 32, "crop": None}  # a folder fit sees the whole part (no centre crop)


def test_the_calibration_scores_come_from_images_the_model_did_not_see(model: Path, folders: dict[str, Path]) -> None:
    """Re-derive the split and score the held-out files with the stored model: the stored calibration
    scores are exactly theirs, and none of them was a training image (training images score lower)."""
    from flawmap.data import find_images, load_files
    from flawmap.deploy.predictor import open_predictor

    extra = json.loads((model / "config.json").read_text())["extra"]
    calibration = [Path(p) for p in extra["calibration_files"]]
    files = find_images(folders["good"])
    train = [f for f in files if f not in calibration]
    assert len(calibration) == extra["calibration"]["n_images"] >= 8 and len(train) == extra["n_train"]
    assert set(calibration) <= set(files)
    pred = open_predictor(model)
    held = load_files(calibration, pred.transform)
    scores, _ = pred.raw(held.images.numpy())
    np.testing.assert_allclose(sorted(scores), _calibration(model)["scores"], rtol=1e-5)
    bank = pred.detector.memory_bank_  # (k, D): every stored patch comes from a training image
    seen = pred.detector._embed(pred.detector._backbone_features(load_files(train, pred.transform).images))
    held_emb = pred.detector._embed(pred.detector._backbone_features(held.images))
    d_seen = torch.cdist(bank, seen.reshape(-1, bank.shape[1])).min(dim=1).values
    d_held = torch.cdist(bank, held_emb.reshape(-1, bank.shape[1])).min(dim=1).values
    assert float(d_seen.max()) < float(d_held.min())  # the bank holds training patches, no held-out one


def test_fit_with_val_good_and_val_bad(folders: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert main(["fit", "--train", str(folders["good"]), "--val-good", str(folders["val_good"]),
                 "--val-bad", str(folders["val_bad"]), "--target-fpr", "0.1", "--out", str(out), *FAST]) == 0
    extra = json.loads((out / "config.json").read_text())["extra"]
    assert extra["n_train"] == 14 and extra["calibration"]["n_images"] == 9
    assert extra["calibration"]["guaranteed_fpr"] == pytest.approx(0.1)  # 9 images allow exactly 1/10
    vb = extra["val_bad"]
    assert vb["n"] == 4 and 0 <= vb["misses"] <= 4 and vb["miss_rate"] == vb["misses"] / 4
    captured = capsys.readouterr()
    assert "--val-bad: " in captured.out and "of 4 defective images" in captured.out
    assert "smallest false-alarm rate" not in captured.err  # 1/10 meets the 10% target


def test_too_few_calibration_images_says_so_in_one_line(model: Path, folders: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--train", str(folders["good"]), "--out", str(tmp_path / "m"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "calibration images: the smallest false-alarm rate they can guarantee is" in err and "(target 1%)" in err


def test_skip_bad_skips_and_lists_a_corrupt_training_image(folders: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from flawmap.data import find_images
    from flawmap.deploy.calibration import plan_calibration

    good = shutil.copytree(folders["good"], tmp_path / "good")
    plan = plan_calibration(find_images(good), group_by="none")
    train, _ = plan.split()
    bad = next(p for p, t in zip(plan.files, train) if t and p.suffix == ".png")  # a training image
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    assert main(["fit", "--train", str(good), "--out", str(tmp_path / "m1"), *FAST]) == 2
    _one_error_line(capsys, bad.name)
    _nothing_written(tmp_path, "m1")
    assert main(["fit", "--train", str(good), "--skip-bad", "--group-by", "none", "--out", str(tmp_path / "m2"),
                 *FAST]) == 0
    assert f"skipped unreadable image: {bad}" in capsys.readouterr().err
    extra = json.loads((tmp_path / "m2" / "config.json").read_text())["extra"]
    assert extra["skipped_images"] == [str(bad)] and (extra["n_train"], extra["calibration"]["n_images"]) == (5, 8)


# ---- predict: verdicts from the stored calibration --------------------------------------------------
def _predict_rows(model: Path, inputs: list[Path], out: Path, *flags: str) -> list[dict[str, str]]:
    assert main(["predict", str(model), *map(str, inputs), "--out", str(out), *flags]) == 0
    return list(csv.DictReader(open(out / "scores.csv")))


def test_predict_writes_calibrated_verdicts(model: Path, folders: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cal = _calibration(model)
    rows = _predict_rows(model, [folders["val_good"], folders["val_bad"]], tmp_path / "o")
    assert len(rows) == 13 and list(rows[0]) == ["path", "score", "normalized_score", "anomalous", "max_pixel", "overlay"]
    for r in rows:
        s, n = float(r["score"]), float(r["normalized_score"])
        assert r["anomalous"] == str(s >= cal["image_threshold"]) == str(n >= 0.5) and 0.0 <= n <= 1.0
        assert (tmp_path / "o" / r["overlay"]).is_file()
    assert f"anomalous iff score >= {cal['image_threshold']:.6g}" in capsys.readouterr().out
    everything = _predict_rows(model, [folders["val_good"]], tmp_path / "o2", "--threshold=-1e9")
    assert all(r["anomalous"] == "True" for r in everything)
    loose = _predict_rows(model, [folders["val_good"]], tmp_path / "o3", "--target-fpr", "0.5")
    from flawmap.metrics import fpr_threshold

    thr = fpr_threshold(cal["scores"], 0.5)[0]
    assert all(r["anomalous"] == str(float(r["score"]) >= thr) for r in loose) and thr < cal["image_threshold"]


def test_predict_on_a_model_without_calibration_says_so(model: Path, folders: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    m = shutil.copytree(model, tmp_path / "old")
    cfg = json.loads((m / "config.json").read_text())
    cfg["extra"]["calibration"] = "16 training images (in-sample)"  # what older versions stored
    (m / "config.json").write_text(json.dumps(cfg))
    rows = _predict_rows(m, [folders["val_good"]], tmp_path / "o")
    assert all(r["anomalous"] == "" and r["normalized_score"] == "" for r in rows)
    assert "has no calibration" in capsys.readouterr().err
    assert main(["predict", str(m), str(folders["val_good"]), "--threshold", "3", "--out", str(tmp_path / "o4")]) == 2
    _one_error_line(capsys, "no calibration", "refit")
    assert not (tmp_path / "o4").exists()


@pytest.mark.parametrize("flags, words", [
    (["--target-fpr", "1.5"], "(0, 1)"), (["--target-fpr", "0"], "(0, 1)"), (["--threshold", "nan"], "finite"),
])
def test_predict_bad_overrides_are_one_line(flags: list[str], words: str, model: Path, folders: dict[str, Path],
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(model), str(folders["val_good"]), "--out", str(tmp_path / "o"), *flags]) == 2
    _one_error_line(capsys, words)
    assert not (tmp_path / "o").exists()


def test_predict_threshold_and_target_fpr_together_is_a_usage_error(model: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(model), "x.png", "--threshold", "1", "--target-fpr", "0.1"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


# ---- bad input of fit: one line, exit 2, no model folder, no fit ------------------------------------
def _bad_fit(tmp_path: Path, folders: dict[str, Path], case: str) -> tuple[list[str], tuple[str, ...]]:
    good = str(folders["good"])
    if case == "empty":
        (tmp_path / "empty").mkdir()
        return ["--train", str(tmp_path / "empty")], ("contains no images", "empty")
    if case == "no_images":
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "readme.txt").write_text("x")
        return ["--train", str(tmp_path / "docs")], ("contains no images",)
    if case == "missing":
        return ["--train", str(tmp_path / "nope")], ("not found", "nope")
    if case == "a_file":
        return ["--train", str(next(folders["good"].glob("*.png")))], ("is not a folder",)
    if case == "train_and_data":
        return ["--train", good, "--data", good, "--category", "x"], ("--train", "not both")
    if case == "nothing":
        return [], ("--train", "--data", "--category")
    if case == "fpr_zero":
        return ["--train", good, "--target-fpr", "0"], ("target FPR", "(0, 1)")
    if case == "fpr_one":
        return ["--train", good, "--target-fpr", "1"], ("target FPR", "(0, 1)")
    if case == "fpr_negative":
        return ["--train", good, "--target-fpr", "-0.01"], ("target FPR", "(0, 1)")
    if case == "fraction_zero":
        return ["--train", good, "--calibration-fraction", "0"], ("calibration fraction", "(0, 1)")
    if case == "fraction_one":
        return ["--train", good, "--calibration-fraction", "1.2"], ("calibration fraction", "(0, 1)")
    if case == "fraction_and_val_good":
        return ["--train", good, "--val-good", str(folders["val_good"]), "--calibration-fraction", "0.2"], ("not both",)
    if case == "val_good_too_few":
        few = tmp_path / "few"
        _write_images(few, 3, seed=5)
        return ["--train", good, "--val-good", str(few)], ("3 good images", "at least 8")
    if case == "val_good_is_train":
        return ["--train", good, "--val-good", good], ("also training images",)
    if case == "too_few_left":
        nine = tmp_path / "nine"
        _write_images(nine, 9, seed=6)
        return ["--train", str(nine)], ("9 good images", "fewer than 2", "--val-good")
    if case == "val_bad_empty":
        (tmp_path / "vb").mkdir()
        return ["--train", good, "--val-bad", str(tmp_path / "vb")], ("--val-bad", "no images")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty", "no_images", "missing", "a_file", "train_and_data", "nothing", "fpr_zero",
                                  "fpr_one", "fpr_negative", "fraction_zero", "fraction_one", "fraction_and_val_good",
                                  "val_good_too_few", "val_good_is_train", "too_few_left", "val_bad_empty"])
def test_bad_fit_input_is_one_line_before_any_fit(case: str, folders: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    flags, words = _bad_fit(tmp_path, folders, case)
    _no_fit(monkeypatch)
    assert main(["fit", *flags, "--out", str(tmp_path / "m"), *FAST]) == 2
    _one_error_line(capsys, "flawmap fit: error:", *words)
    _nothing_written(tmp_path)


def test_a_memory_budget_too_small_stops_before_the_backbone(folders: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--train", str(folders["good"]), "--out", str(tmp_path / "m"), *FAST,
                 "--param", "max_memory_gb=0.00001"]) == 2
    _one_error_line(capsys, "above the budget", "max_memory_gb")
    _nothing_written(tmp_path)


def test_load_folder_returns_a_split_of_uint8_or_float_images(folders: dict[str, Path]) -> None:
    from flawmap.data import Split, Transform, load_folder

    tf = Transform(resize=32)
    s8 = load_folder(folders["good"], tf, keep_uint8=True)
    sf = load_folder(folders["good"], tf)
    assert isinstance(s8, Split) and len(s8) == 14 and s8.images.dtype.is_floating_point is False
    assert s8.images.shape == (14, 3, 32, 32) and s8.masks is None and not s8.labels.any()
    assert any(p.parent.name == "line2" for p in s8.paths) and {p.suffix for p in s8.paths} == {".png", ".jpg"}
    assert (s8.images.float() / 255).equal(sf.images)  # the same values, 4x less memory


# ---- test: the stored decision's false-alarm and miss rates ------------------------------------------
def test_test_reports_the_rates_of_the_stored_decision(synthetic_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m"
    assert main(["fit", "--data", str(synthetic_root), "--category", "object", "--out", str(model), *FAST]) == 0
    test_dir = synthetic_root / "object" / "test"
    rows = _predict_rows(model, [test_dir], tmp_path / "o")
    good = [r["anomalous"] == "True" for r in rows if "/test/good/" in r["path"]]
    bad = [r["anomalous"] == "False" for r in rows if "/test/good/" not in r["path"]]
    capsys.readouterr()
    assert main(["test", str(model), "--data", str(synthetic_root), "--category", "object"]) == 0
    header, _, body, summary = capsys.readouterr().out.strip().splitlines()
    row = dict(zip(header.split(), body.split(), strict=True))
    assert float(row["false_alarm_rate"]) == pytest.approx(sum(good) / len(good), abs=1e-4)  # same verdicts as predict
    assert float(row["miss_rate"]) == pytest.approx(sum(bad) / len(bad), abs=1e-4)
    assert f"{sum(good)} false alarms on {len(good)} good images, {sum(bad)} misses on {len(bad)}" in summary
    cfg = json.loads((model / "config.json").read_text())
    del cfg["extra"]["calibration"]
    (model / "config.json").write_text(json.dumps(cfg))
    assert main(["test", str(model), "--data", str(synthetic_root), "--category", "object"]) == 0
    captured = capsys.readouterr()
    header, _, body = captured.out.strip().splitlines()
    row = dict(zip(header.split(), body.split(), strict=True))
    assert row["false_alarm_rate"] == row["miss_rate"] == "n/a" and "has no calibration" in captured.err


def test_fit_aspect_pad_is_stored_and_used_by_predict(folders: dict[str, Path], tmp_path: Path) -> None:
    """`fit --aspect pad` on mixed-size images (40x40 and 48x36): the model records the letterbox, predict uses it."""
    from flawmap.data import Transform
    from flawmap.deploy.predictor import open_predictor

    out = tmp_path / "m"
    assert main(["fit", "--train", str(folders["good"]), "--out", str(out), "--aspect", "pad", *FAST]) == 0
    tf = json.loads((out / "config.json").read_text())["extra"]["transform"]
    assert tf["aspect"] == "pad" and open_predictor(out).transform == Transform.from_dict(tf)
    assert main(["predict", str(out), str(folders["val_good"]), "--out", str(tmp_path / "o")]) == 0
