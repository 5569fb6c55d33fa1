import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve

from flawmap.errors import DataError
from flawmap.metrics import f1_max, pixel_f1_max


def _sk_best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(f1.max())


def test_hand_value() -> None:
    # thresholds .9 .8 .7 .2 .1 give F1 = 1/2, 4/5, 2/3, 6/7, 3/4
    f1, thr = f1_max([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.7, 0.2])
    assert f1 == pytest.approx(6 / 7)
    assert thr == pytest.approx(0.2)
    assert f1_max([0, 1], [0.2, 0.7]) == (1.0, pytest.approx(0.7))


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200) / 3.0 + 0.3 * labels
    f1, thr = f1_max(labels, scores)
    assert f1 == pytest.approx(_sk_best_f1(labels, scores), abs=1e-12)
    assert f1_score(labels, scores >= thr) == pytest.approx(f1, abs=1e-12)


def test_pixel_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((4, 16, 16)) < 0.15
    maps = (rng.random((4, 16, 16)) + 0.6 * masks).round(2).astype(np.float32)
    f1, thr = pixel_f1_max(masks, maps)
    assert f1 == pytest.approx(_sk_best_f1(masks.ravel(), maps.ravel()), abs=1e-12)
    assert f1_score(masks.ravel(), maps.ravel() >= thr) == pytest.approx(f1, abs=1e-12)


def test_no_positive_raises() -> None:
    with pytest.raises(DataError, match="anomalous"):
        f1_max([0, 0], [0.1, 0.2])
