"""Adding good images without refitting: PaDiM equals a fit on all images, SPADE's gallery grows to the
fit's, PatchCore continues its greedy coreset; `update_model` / `flawmap update` write a new, recalibrated
model beside the old one, and refuse what they cannot do."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flawmap import get_detector
from flawmap.cli import main
from flawmap.deploy.predictor import model_id, open_predictor
from flawmap.deploy.update import plan_update, previous_calibration_files, update_model
from flawmap.errors import ConfigError, DataError, OutputError
from flawmap.registry import detector_class

from .conftest import TF, fit_and_save


def _tiny(method: str, **kw):
    return get_detector(method, **{**detector_class(method).tiny_params(), "device": "cpu", **kw})


def test_padim_add_good_equals_a_fit_on_all_images(tiny_data) -> None:
    """Fit on 6 images + add 4 = fit on all 10, to float tolerance: the tolerance follows the fit's own float32
    reproducibility (the same fit with another batch size sums in another order: ~1e-3 relative on L^-1,
    ~1e-5 on the scores)."""
    train, test = tiny_data
    x = train.images  # (10, 3, 64, 64)
    whole = _tiny("padim", batch_size=4).fit(x)
    other = _tiny("padim", batch_size=2).fit(x)  # the same fit, summed in another order
    part = _tiny("padim", batch_size=4).fit(x[:6])
    assert part.n_images_ == 6
    part.add_good(x[6:])
    assert part.n_images_ == whole.n_images_ == 10

    def rel(a, b) -> float:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return float((a - b).abs().max() / b.abs().max())

    a, b, c = part.predict(test.images), whole.predict(test.images), other.predict(test.images)
    for got, ref, noise in ((part.mean_, whole.mean_, rel(other.mean_, whole.mean_)),
                            (part.inv_chol_, whole.inv_chol_, rel(other.inv_chol_, whole.inv_chol_)),
                            (a.scores, b.scores, rel(c.scores, b.scores)), (a.maps, b.maps, rel(c.maps, b.maps))):
        # the update adds one more float32 rounding step (Sigma recovered from L^-1): a few times the noise
        assert rel(got, ref) <= 4 * noise + 1e-6, (rel(got, ref), noise)
    assert rel(a.scores, b.scores) < 1e-4


def test_padim_needs_the_sample_count(tiny_data) -> None:
    x = tiny_data[0].images
    det = _tiny("padim").fit(x[:4])
    del det.n_images_
    with pytest.raises(ConfigError, match="refit"):
        det.add_good(x[4:6])


def test_spade_add_good_equals_a_fit_on_all_images(tiny_data) -> None:
    train, test = tiny_data
    x = train.images
    whole = _tiny("spade", k=8).fit(x)
    part = _tiny("spade", k=8).fit(x[:5])
    assert part.k_ == 5  # clamped to the images it had
    part.add_good(x[5:])
    assert part.k_ == whole.k_ == 8
    torch.testing.assert_close(part.train_image_features_, whole.train_image_features_, rtol=1e-5, atol=1e-6)
    a, b = part.predict(test.images), whole.predict(test.images)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


def test_patchcore_add_good_continues_the_coreset(tiny_data) -> None:
    train, test = tiny_data
    x = train.images
    det = _tiny("patchcore", coreset_ratio=0.25).fit(x[:6])
    bank0 = det.memory_bank_.clone()
    before = det.predict(x[6:]).scores
    det.add_good(x[6:])
    h, w = det.grid_
    added = len(det.memory_bank_) - len(bank0)
    assert added == round(0.25 * 4 * h * w)  # the fit's share of the new patches
    assert torch.equal(det.memory_bank_[:len(bank0)], bank0)  # the old bank is kept as it was
    after = det.predict(x[6:]).scores
    assert (after <= before + 1e-6).all() and after.mean() < before.mean()
    full = _tiny("patchcore", coreset_ratio=1.0).fit(x[:6])
    full.add_good(x[6:])  # ratio 1: every new patch joins, so the added images score (about) zero: what is
    # left is the float32 rounding of a distance at zero (sqrt of |a|^2 + |b|^2 - 2ab), far below real scores
    assert float(full.predict(x[6:]).scores.max()) < 0.05 * float(before.min())


def test_patchcore_scores_ensemble_refuses(tiny_data) -> None:
    det = _tiny("patchcore", backbone=("efficientnet_lite0", "mobilenet_v2"), ensemble="scores")
    det.fitted_ = True  # refused before any feature is computed: no need to fit two backbones here
    with pytest.raises(ConfigError, match="ensemble"):
        det.add_good(tiny_data[0].images[4:6])


# ---- update_model and `flawmap update` ----------------------------------------------------------------
def _files(root: Path, split: str, label: str = "good") -> list[Path]:
    return sorted((root / "object" / split / label).glob("*.png"))


@pytest.fixture
def fitted(synthetic_root, tiny_data, tmp_path) -> tuple[Path, list[Path], list[Path]]:
    """A PaDiM model folder fitted on 4 train images, its 8 calibration files (the rest of train + test good
    images, copied), and 6 new good images (flipped train images: a new look)."""
    from PIL import Image

    from flawmap.data import load_files

    train = _files(synthetic_root, "train")
    cal_dir, new_dir = tmp_path / "cal", tmp_path / "new"
    cal_dir.mkdir()
    new_dir.mkdir()
    cal = []
    for i, p in enumerate(train[4:] + _files(synthetic_root, "test")[:2]):
        cal.append(cal_dir / f"{i:02d}.png")
        shutil.copy(p, cal[-1])
    new = []
    for i, p in enumerate(train[:6]):
        new.append(new_dir / f"{i:02d}.png")
        Image.open(p).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(new[-1])
    x = load_files(train[:4], TF).images
    held = load_files(cal, TF).images
    path = fit_and_save("padim", x, held, tmp_path / "model", device="cpu")
    cfg = json.loads((path / "config.json").read_text())
    cfg["extra"]["calibration"]["source"] = "held out"
    (path / "config.json").write_text(json.dumps(cfg))
    return path, cal, new


def _tree_hash(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


def test_update_model_round_trip(fitted, tmp_path) -> None:
    model, cal, new = fitted
    before = _tree_hash(model)
    plan = plan_update(new, cal, fraction=0.3, seed=0)
    assert len(plan.held_out) == 2 and len(plan.add) == 4 and not set(plan.held_out) & set(plan.add)
    res = update_model(model, plan, tmp_path / "v2")
    assert _tree_hash(model) == before  # the old folder is untouched
    assert res.model_id == model_id(tmp_path / "v2") != model_id(model) == res.parent_id
    assert res.version == 2 and res.added == 4
    cfg = json.loads((tmp_path / "v2" / "config.json").read_text())
    extra = cfg["extra"]
    assert extra["model_version"] == 2 and extra["parent_model_id"] == res.parent_id
    assert extra["calibration"]["n_images"] == len(cal) + 2 and "previous calibration images" in extra["calibration"]["source"]
    assert sorted(extra["calibration_files"]) == sorted(str(p.absolute()) for p in plan.calibration)
    assert cfg["state"]["n_images_"] == 4 + 4
    pred = open_predictor(tmp_path / "v2", device="cpu")
    assert pred.model_version == 2 and pred.card["model_id"] == res.model_id
    # the calibration is exactly the held-out rule on the updated model's scores of those images
    from flawmap.data import load_files
    from flawmap.metrics.thresholds import calibrate

    ref = pred.detector.predict(load_files(plan.calibration, TF).images)
    assert pred.calibration.image_threshold == calibrate(ref.scores, ref.maps, pred.calibration.target_fpr).image_threshold
    # a second update finds the calibration images the first one recorded
    assert previous_calibration_files(extra) == [Path(p) for p in extra["calibration_files"]]


def test_update_refusals(fitted, tmp_path) -> None:
    model, cal, new = fitted
    plan = plan_update(new, cal)
    with pytest.raises(OutputError, match="old one"):
        update_model(model, plan, model)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError):
        update_model(model, plan, tmp_path / "busy")
    other = tmp_path / "ff"
    shutil.copytree(model, other)
    cfg = json.loads((other / "config.json").read_text())
    for method in ("fastflow", "riad"):
        cfg["detector"] = method
        (other / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match=f"{method} model learns network weights.*refit"):
            update_model(other, plan, tmp_path / f"out-{method}")
    for kw, err, words in (({"fraction": 0}, ConfigError, "(0, 1)"), ({"fraction": 1.0}, ConfigError, "(0, 1)"),
                           ({"fraction": True}, ConfigError, "(0, 1)")):
        with pytest.raises(err, match=re_escape(words)):
            plan_update(new, cal, **kw)
    with pytest.raises(DataError, match="at least 2"):
        plan_update(new[:1], cal)
    with pytest.raises(DataError, match="also calibration images"):
        plan_update([*new, cal[0]], cal)
    with pytest.raises(DataError, match="--val-good"):
        plan_update(new, cal[:3])


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_cli_update(fitted, tmp_path, capsys) -> None:
    model, cal, new = fitted
    out = tmp_path / "v2"
    assert main(["update", str(model), "--add-good", str(new[0].parent), "--val-good", str(cal[0].parent),
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"-> {out}" in text and "version 2" in text and "calibration:" in text
    assert open_predictor(out, device="cpu").model_version == 2
    # the next update finds its calibration images in the model; default --out is MODEL-v3
    new3 = tmp_path / "new3"
    shutil.copytree(new[0].parent, new3)
    assert main(["update", str(out), "--add-good", str(new3), "--no-progress"]) == 0
    assert Path(f"{out.resolve()}-v3").is_dir()
    for argv, words in ((["update", str(model)], "--add-good"),
                        (["update", str(model), "--add-good", str(new3), "--label", "good"], "--from-log"),
                        (["update", str(model), "--add-good", str(tmp_path / "nope")], "nope")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_cli_update_from_a_log(fitted, tmp_path, capsys) -> None:
    """--from-log DIR --label good: the kept images an operator marked good join the model."""
    import time

    from flawmap.serve import inspections as ilog

    model, cal, new = fitted
    log = ilog.InspectionLog(tmp_path / "log", keep_images="all").start()
    for i, p in enumerate(new):
        data = p.read_bytes()
        log.record({"time": time.time(), "request_id": "0" * 32, "name": p.name,
                    "image_sha256": hashlib.sha256(data).hexdigest(), "width": 64, "height": 64, "score": 1.0,
                    "normalized_score": 0.7, "verdict": "anomalous", "threshold": 0.5, "model_id": "ab",
                    "model_version": 1, "latency_ms": 1.0, "batch_size": 1, "key_id": None}, data)
    log.stop()
    rows = list(ilog.iter_rows(tmp_path / "log"))
    for r in rows[:5]:  # five false alarms reviewed as good, one confirmed defect
        ilog.set_label(tmp_path / "log", r["id"], "good", None, "test")
    ilog.set_label(tmp_path / "log", rows[5]["id"], "defect", None, "test")
    assert main(["update", str(model), "--from-log", str(tmp_path / "log"), "--label", "good", "--val-good",
                 str(cal[0].parent), "--out", str(tmp_path / "v2"), "--no-progress"]) == 0
    extra = json.loads((tmp_path / "v2" / "config.json").read_text())["extra"]
    assert extra["updates"][0]["added"] + extra["updates"][0]["held_out"] == 5
