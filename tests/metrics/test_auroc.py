import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve as sk_roc_curve

from flawmap.errors import DataError
from flawmap.metrics import image_auroc, pixel_auroc, roc_curve


def test_hand_values() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert image_auroc([1, 0], [0.9, 0.1]) == 1.0
    assert image_auroc([0, 1], [0.9, 0.1]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 12, 300) / 4.0  # many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf and fpr[0] == 0.0 and tpr[-1] == 1.0


def test_pixel_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((6, 32, 32)) < 0.1
    maps = (rng.random((6, 32, 32)) + 0.5 * masks).round(2).astype(np.float32)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(masks.astype(np.uint8) * 255, maps) == pytest.approx(expected, abs=1e-12)


def test_errors() -> None:
    with pytest.raises(DataError, match="both classes"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="both classes"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.ones((2, 4, 4)))
    with pytest.raises(DataError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(DataError, match="0/1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(DataError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.ones((2, 4, 5)))
