"""Groups of correlated good images: the rules, the whole-group hold-out, the leakage check, the binomial
interval, `flawmap fit --group-by` and `flawmap check` with their bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flawmap.cli import main
from flawmap.deploy.calibration import plan_calibration
from flawmap.deploy.groups import (
    distance_matrix,
    groups_from_paths,
    holdout_groups,
    leakage_report,
    near_duplicate_groups,
    parse_group_by,
)
from flawmap.errors import ConfigError, DataError
from flawmap.metrics import binomial_interval

FAST = ["--param", "backbone=efficientnet_lite0", "--resize", "32", "--crop", "0"]


def _clustered(groups: int, size: int, spread: float, seed: int = 0, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Unit descriptors (groups * size, dim): ``size`` near-copies around each of ``groups`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    x = np.repeat(centres, size, 0) + spread * rng.normal(size=(groups * size, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(groups), size)


# ---- rules -----------------------------------------------------------------------------------------
def test_group_rules_from_paths(tmp_path: Path) -> None:
    files = [tmp_path / "a" / "part1_l0.png", tmp_path / "a" / "part1_l1.png", tmp_path / "b" / "part2_l0.png",
             tmp_path / "b" / "other.png"]
    assert groups_from_paths(files, parse_group_by("auto"), tmp_path) is None
    assert groups_from_paths(files, parse_group_by("none"), tmp_path).tolist() == [0, 1, 2, 3]
    folder = groups_from_paths(files, parse_group_by("folder"), tmp_path)
    assert folder[0] == folder[1] != folder[2] == folder[3]
    rx = groups_from_paths(files, parse_group_by(r"part(\d+)_"), tmp_path)
    assert rx[0] == rx[1] and len({rx[0], rx[2], rx[3]}) == 3  # no match: its own group


@pytest.mark.parametrize("text, words", [(r"part\d+", "no capture group"), ("part(", "not a valid regular expression")])
def test_bad_group_by_names_the_allowed_rules(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        parse_group_by(text)
    assert "folder" in str(err.value) and "none" in str(err.value)


def test_holdout_takes_whole_groups() -> None:
    ids = np.repeat(np.arange(10), 6)
    cal = holdout_groups(ids, 8, seed=3)
    assert cal.sum() >= 8 and cal.sum() % 6 == 0
    assert not set(ids[cal]) & set(ids[~cal])  # no group straddles the split


def test_a_group_by_that_leaves_too_few_calibration_images_is_refused(tmp_path: Path) -> None:
    files = [tmp_path / f"part{i % 2}_{i}.png" for i in range(40)]  # two parts: one group is 20 images
    plan_calibration(files, group_by=r"part(\d)_", root=tmp_path)  # 20 calibration, 20 training: fine
    one = [tmp_path / f"part0_{i}.png" for i in range(40)]
    with pytest.raises(DataError, match="1 group"):
        plan_calibration(one, group_by=r"part(\d)_", root=tmp_path)


# ---- found groups and the leakage check -------------------------------------------------------------
def test_near_copies_are_found_and_iid_images_stay_apart() -> None:
    x, truth = _clustered(groups=30, size=5, spread=0.05)
    ids, info = near_duplicate_groups(distance_matrix(x))
    same_truth, same_found = truth[:, None] == truth[None], ids[:, None] == ids[None]
    assert (same_found[same_truth]).mean() > 0.95 and (same_truth[same_found]).mean() > 0.95
    iid = np.random.default_rng(1).normal(size=(150, 64)).astype(np.float32)
    iid /= np.linalg.norm(iid, axis=1, keepdims=True)
    ids_iid, info_iid = near_duplicate_groups(distance_matrix(iid))
    assert info_iid["largest"] <= 0.25 * len(iid) and info_iid["groups"] > 50


def test_leakage_report_flags_a_random_split_of_bursts_only() -> None:
    x, truth = _clustered(groups=30, size=5, spread=0.05)
    found, _ = near_duplicate_groups(distance_matrix(x))
    rng = np.random.default_rng(0)
    random_cal = np.zeros(len(x), bool)
    random_cal[rng.permutation(len(x))[:25]] = True
    rep = leakage_report(distance_matrix(x), random_cal, found)
    assert rep["leak"] and rep["near_copies"] > 15 and rep["ratio"] < rep["ratio_groups"]
    group_cal = holdout_groups(truth, 25, 0)
    assert not leakage_report(distance_matrix(x), group_cal, found)["leak"]
    iid = np.random.default_rng(2).normal(size=(150, 64)).astype(np.float32)
    iid /= np.linalg.norm(iid, axis=1, keepdims=True)
    found_iid, _ = near_duplicate_groups(distance_matrix(iid))
    cal = np.zeros(150, bool)
    cal[rng.permutation(150)[:25]] = True
    rep = leakage_report(distance_matrix(iid), cal, found_iid)
    assert not rep["leak"] and 0.7 < rep["ratio"] < 1.4


def test_binomial_interval_matches_the_exact_reference() -> None:
    from scipy.stats import binomtest

    for k, n in [(0, 20), (3, 50), (6, 189), (20, 20)]:
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert binomial_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    with pytest.raises(DataError):
        binomial_interval(5, 3)


# ---- the commands -----------------------------------------------------------------------------------
def _part_shots(folder: Path, parts: int, shots: int, seed: int) -> None:
    """``shots`` lighting variants of each of ``parts`` random-texture parts, one sub-folder per part."""
    rng = np.random.default_rng(seed)
    for p in range(parts):
        tex = rng.normal(128, 40, (40, 40))
        for s in range(shots):
            img = np.clip(tex * rng.uniform(0.8, 1.2) + rng.normal(0, 3, tex.shape), 0, 255).astype(np.uint8)
            (folder / f"part{p:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).convert("RGB").save(folder / f"part{p:02d}" / f"shot{s}.png")


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parts")
    _part_shots(root / "train", 8, 4, seed=0)
    _part_shots(root / "new", 10, 1, seed=1)
    (root / "empty").mkdir()
    return {k: root / k for k in ("train", "new", "empty")}


@pytest.fixture(scope="module")
def model(parts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "m"
    assert main(["fit", "--train", str(parts["train"]), "--group-by", "folder", "--out", str(out), *FAST]) == 0
    return out


def test_fit_group_by_folder_holds_out_whole_parts_and_stores_the_check(model: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    extra = json.loads((model / "config.json").read_text())["extra"]
    cal_parts = {Path(p).parent.name for p in extra["calibration_files"]}
    assert len(extra["calibration_files"]) == 4 * len(cal_parts) >= 8  # whole parts: 4 shots each
    leak = extra["calibration"]["leakage"]
    assert leak["group_by"] == "folder" and leak["near_copies"] == 0 and not leak["leak"]
    from flawmap.deploy.predictor import open_predictor

    assert open_predictor(model).card["calibration"]["leakage"] == leak  # GET /v1/model shows it


def test_fit_prints_what_the_promise_assumes(parts: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--train", str(parts["train"]), "--group-by", "none", "--out", str(tmp_path / "m"), *FAST]) == 0
    out = capsys.readouterr()
    assert "this holds for new parts if they are like the calibration images" in out.out
    leak = json.loads((tmp_path / "m" / "config.json").read_text())["extra"]["calibration"]["leakage"]
    if leak["leak"]:  # a random split of 4-shot parts: the line names the remedy
        assert "--group-by" in out.err and "optimistic" in out.err


@pytest.mark.parametrize("flags, words", [
    (["--group-by", r"part\d+"], "no capture group"),
    (["--group-by", r"(shot)"], "group(s)"),  # every image in one group: fewer than 8 calibration images
])
def test_fit_bad_group_by_is_one_line(flags: list[str], words: str, parts: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--train", str(parts["train"]), "--out", str(tmp_path / "m"), *flags, *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "m").exists()


def test_check_reports_rates_with_intervals_and_recalibrates(model: Path, parts: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    m = shutil.copytree(model, tmp_path / "m")
    before = json.loads((m / "config.json").read_text())["extra"]["calibration"]
    rc = main(["check", str(m), "--good", str(parts["new"]), "--bad", str(parts["new"])])
    out = capsys.readouterr().out
    assert rc in (0, 1) and "false alarms on 10 images" in out and "interval" in out and "defective:" in out
    assert ("PROMISE VIOLATED" in out) == (rc == 1)
    assert main(["check", str(m), "--good", str(parts["new"]), "--recalibrate"]) == 0
    extra = json.loads((m / "config.json").read_text())["extra"]
    assert extra["calibration_history"][0]["image_threshold"] == before["image_threshold"]
    assert extra["calibration"]["n_images"] == 10 and "check --recalibrate" in extra["calibration"]["source"]
    assert "recalibrated" in capsys.readouterr().out


def test_check_a_promise_that_fails_exits_1(model: Path, parts: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    m = shutil.copytree(model, tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["extra"]["calibration"]["image_threshold"] = -1e9  # flags everything: the promise cannot hold
    (m / "config.json").write_text(json.dumps(cfg))
    assert main(["check", str(m), "--good", str(parts["new"])]) == 1
    assert "PROMISE VIOLATED" in capsys.readouterr().out


def test_check_an_empty_good_folder_is_one_line(model: Path, parts: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(model), "--good", str(parts["empty"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "--good" in err, err


def test_check_promise_verdicts() -> None:
    from flawmap.deploy.calibration import check_promise
    from flawmap.metrics import calibrate

    cal = calibrate(np.arange(99.0), np.zeros((99, 4, 4)), 0.01)  # threshold just above 98; guaranteed 1%
    ok = check_promise(cal, np.r_[np.zeros(199), 1000.0])  # 1 of 200 flagged: at the promise
    assert (ok.false_alarms, ok.n, ok.violated, ok.consistent) == (1, 200, False, True)
    bad = check_promise(cal, np.r_[np.zeros(150), np.full(50, 1000.0)])  # 25% flagged
    assert bad.violated and not bad.consistent and bad.interval[0] > cal.guaranteed_fpr
    few = check_promise(cal, np.r_[np.zeros(9), 1000.0])  # 10% of 10: cannot tell
    assert not few.violated and not few.consistent
    with pytest.raises(DataError):
        check_promise(cal, np.zeros(0))
