import json

import numpy as np
import pytest

from flawmap.errors import ConfigError
from flawmap.metrics.thresholds import apply_threshold, f1_threshold


def test_thresholds() -> None:
    assert f1_threshold([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.7, 0.2]) == pytest.approx(0.2)
    np.testing.assert_array_equal(apply_threshold([0.1, 0.2, 0.3], 0.2), [False, True, True])


def test_image_and_pixel_thresholds_of_a_test_set() -> None:
    from flawmap.metrics import image_threshold, pixel_threshold

    assert image_threshold([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.7, 0.2]) == pytest.approx(0.2)  # F1-optimal
    assert image_threshold([0, 0, 0], [1.0, 5.0, 2.0]) == 2.0  # no defect: the median score
    masks = np.zeros((2, 4, 4), bool)
    masks[1, :2] = True
    maps = np.where(masks, 0.9, 0.1) + np.linspace(0, 0.05, 32).reshape(2, 4, 4)
    assert pixel_threshold(masks, maps) == pytest.approx(maps[masks].min())  # perfect separation
    assert pixel_threshold(None, maps) is None
    assert pixel_threshold(np.zeros_like(masks), maps) is None and pixel_threshold(np.ones_like(masks), maps) is None


def test_map_display_range() -> None:
    from flawmap.metrics import map_display_range

    maps = np.arange(1001.0).reshape(1, 7, 143)
    assert map_display_range(maps) == pytest.approx((10.0, 999.0))  # percentiles 1 and 99.9
    assert map_display_range(maps, headroom=2.0) == pytest.approx((10.0, 10.0 + 2 * 989.0))  # span doubled
    neg = map_display_range(-maps, headroom=2.0)  # negative maps (FastFlow log-likelihood): still low <= high
    assert neg[0] < neg[1] and neg == pytest.approx((-990.0, -990.0 + 2 * 989.0))
    assert map_display_range(maps, percentiles=(0, 100)) == (0.0, 1000.0)
    with pytest.raises(ConfigError, match="percentiles"):
        map_display_range(maps, percentiles=(50, 10))
    with pytest.raises(ConfigError, match="headroom"):
        map_display_range(maps, headroom=0)


# ---- held-out calibration (split conformal) ------------------------------------------------------
from flawmap.metrics import Calibration, calibrate, decision_rates, fpr_threshold  # noqa: E402


@pytest.mark.parametrize("n, target, rank, guaranteed", [
    (9, 0.1, 9, 0.1),         # k = ceil(10 * 0.9) = 9: above the maximum, 1/10 exactly
    (19, 0.1, 18, 0.1),       # k = 18: above the 18th of 19, 2/20
    (99, 0.01, 99, 0.01),     # (n + 1)(1 - a) = 99 exactly: no float round-up to 100
    (5, 0.01, 5, 1 / 6),      # too few images: above the maximum, only 1/6 guaranteed
    (200, 0.05, 191, 10 / 201),
])
def test_fpr_threshold_exact_small_cases(n: int, target: float, rank: int, guaranteed: float) -> None:
    scores = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))  # sorted: s_(k) = k
    t, g = fpr_threshold(scores, target)
    assert t > rank and t == np.nextafter(float(rank), np.inf)  # just above s_(k): s_(k) itself is good
    assert g == pytest.approx(guaranteed) and g <= max(target, 1 / (n + 1)) + 1e-12


def test_fpr_threshold_guarantee_by_simulation() -> None:
    """Over many draws of n calibration + 1 new good score, the false-alarm probability is exactly
    (n + 1 - k) / (n + 1) (the split-conformal rank argument), so <= the target."""
    rng = np.random.default_rng(0)
    n, target, trials = 30, 0.1, 20000
    draws = rng.standard_normal((trials, n + 1))
    alarms = 0
    for row in draws:
        t, g = fpr_threshold(row[:n], target)
        alarms += row[n] >= t
    expected = (n + 1 - int(np.ceil((n + 1) * (1 - target)))) / (n + 1)  # 3/31
    assert g == pytest.approx(expected)
    rate = alarms / trials
    assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / trials)  # 4 sigma
    assert rate <= target + 4 * np.sqrt(target * (1 - target) / trials)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), "x", True])
def test_fpr_threshold_refuses_targets_outside_0_1(bad) -> None:
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        fpr_threshold([1.0, 2.0], bad)


def test_fpr_threshold_refuses_empty_or_non_finite_scores() -> None:
    from flawmap.errors import DataError

    for scores in ([], [1.0, float("nan")], [float("inf")]):
        with pytest.raises(DataError):
            fpr_threshold(scores, 0.1)


def _calibration(n: int = 40, target: float = 0.05) -> Calibration:
    rng = np.random.default_rng(1)
    maps = rng.random((n, 8, 8)).astype(np.float32)
    scores = maps.reshape(n, -1).max(axis=1) + rng.random(n)
    return calibrate(scores, maps, target, source="test")


def test_calibrate_thresholds_and_stored_scores() -> None:
    n = 40
    rng = np.random.default_rng(1)
    maps = rng.random((n, 8, 8)).astype(np.float32)
    scores = maps.reshape(n, -1).max(axis=1) + rng.random(n)
    cal = _calibration(n, 0.05)
    assert (cal.image_threshold, cal.guaranteed_fpr) == fpr_threshold(scores, 0.05)
    assert cal.pixel_threshold == fpr_threshold(maps.reshape(n, -1).max(axis=1), 0.05)[0]
    assert cal.n_images == n and cal.score_low == pytest.approx(scores.min()) and cal.source == "test"
    assert list(cal.scores) == sorted(cal.scores) and len(cal.scores) == len(cal.map_maxima) == n
    assert cal.decide(scores).sum() <= 0.05 * n  # in-sample, at most the target by construction
    with pytest.raises(Exception, match="maps"):
        calibrate(scores, maps[:-1], 0.05)


def test_normalize_is_monotone_with_the_threshold_at_one_half() -> None:
    cal = _calibration()
    v = np.linspace(cal.score_low - 1, 2 * cal.image_threshold, 1001)
    norm = cal.normalize(v)
    assert norm.min() >= 0.0 and norm.max() <= 1.0 and np.all(np.diff(norm) >= 0)
    assert cal.normalize([cal.image_threshold])[0] == 0.5
    assert cal.normalize([cal.score_low])[0] == 0.0 and cal.normalize([2 * cal.image_threshold - cal.score_low])[0] == 1.0
    np.testing.assert_array_equal(norm >= 0.5, cal.decide(v))  # normalised >= 0.5 exactly when anomalous
    below = np.nextafter(cal.image_threshold, -np.inf)
    assert not cal.decide([below])[0] and cal.normalize([below])[0] < 0.5
    low = cal.with_threshold(cal.score_low - 1.0)  # a user threshold below every calibration score
    out = low.normalize([cal.score_low - 2.0, cal.score_low - 1.0, cal.score_low])
    assert out[0] < 0.5 <= out[1] and out[2] == 1.0


def test_with_threshold_and_with_target_fpr() -> None:
    cal = _calibration(40, 0.05)
    assert cal.with_threshold(3.0).image_threshold == 3.0 and "user" in cal.with_threshold(3.0).source
    for bad in (float("nan"), float("inf"), "3", True):
        with pytest.raises(ConfigError):
            cal.with_threshold(bad)
    loose = cal.with_target_fpr(0.25)
    assert (loose.image_threshold, loose.guaranteed_fpr) == fpr_threshold(cal.scores, 0.25)
    assert loose.pixel_threshold == fpr_threshold(cal.map_maxima, 0.25)[0] and loose.target_fpr == 0.25
    assert loose.image_threshold < cal.image_threshold
    with pytest.raises(ConfigError):
        cal.with_target_fpr(1.0)
    from dataclasses import replace

    with pytest.raises(ConfigError, match="no calibration scores"):
        replace(cal, scores=(), map_maxima=()).with_target_fpr(0.1)


def test_resolution_note() -> None:
    few = calibrate(np.arange(31.0), np.zeros((31, 2, 2)), 0.01)
    assert few.guaranteed_fpr == pytest.approx(1 / 32)
    note = few.resolution_note()
    assert note.startswith("31 calibration images") and "3.1%" in note and "target 1%" in note and "99" in note
    assert calibrate(np.arange(99.0), np.zeros((99, 2, 2)), 0.01).resolution_note() is None


def test_calibration_round_trip_through_json() -> None:
    cal = _calibration()
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    old = {k: v for k, v in cal.to_dict().items() if k not in ("scores", "map_maxima")}  # stored without scores
    assert Calibration.from_dict(old).scores == ()


@pytest.mark.parametrize("edit", [
    lambda d: "not a dict", lambda d: {**d, "kind": "minmax"}, lambda d: {k: v for k, v in d.items() if k != "image_threshold"},
    lambda d: {**d, "image_threshold": "high"}, lambda d: {**d, "pixel_threshold": float("nan")},
    lambda d: {**d, "map_range": [1.0]}, lambda d: {**d, "map_range": "ab"}, lambda d: {**d, "map_range": [2.0, 1.0]},
    lambda d: {**d, "n_images": 0}, lambda d: {**d, "target_fpr": 1.5}, lambda d: {**d, "guaranteed_fpr": 0.0},
    lambda d: {**d, "scores": d["scores"][:-1]}, lambda d: {**d, "scores": [*d["scores"][:-1], float("inf")]},
])
def test_calibration_from_bad_dicts(edit) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        Calibration.from_dict(edit(_calibration().to_dict()))


def test_decision_rates() -> None:
    r = decision_rates([0, 0, 0, 0, 1, 1, 1], [True, False, False, False, True, False, True])
    assert r == {"false_alarm_rate": 0.25, "miss_rate": pytest.approx(1 / 3), "false_alarms": 1, "n_good": 4,
                 "misses": 1, "n_defective": 3}
    assert decision_rates([0, 0], [False, True])["miss_rate"] is None
    assert decision_rates([1], [False])["false_alarm_rate"] is None
    with pytest.raises(Exception, match="verdicts"):
        decision_rates([0, 1], [True])


def test_calibration_of_negative_maps_round_trips() -> None:
    """FastFlow's maps are negative log-likelihoods: the stored calibration must still load."""
    from flawmap.metrics.thresholds import Calibration, calibrate

    rng = np.random.default_rng(0)
    maps = -1.0 - rng.random((12, 8, 8))
    cal = calibrate(maps.reshape(12, -1).max(1), maps, target_fpr=0.2)
    assert cal.map_range[0] <= cal.map_range[1]
    assert Calibration.from_dict(cal.to_dict()) == cal
