import numpy as np
import pytest
from skimage.measure import label as sk_label

from flawmap.errors import ConfigError, DataError
from flawmap.metrics import aupro, pro_curve


def _brute_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[list[float], list[float]]:
    """PRO curve by brute force: boolean masks at every unique threshold."""
    comps = []
    for i, m in enumerate(masks):
        lab = sk_label(m, connectivity=2)  # 8-connectivity
        for c in range(1, lab.max() + 1):
            full = np.zeros(masks.shape, bool)
            full[i] = lab == c
            comps.append(full)
    neg = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & neg).sum() / neg.sum())
        pros.append(float(np.mean([(pred & c).sum() / c.sum() for c in comps])))
    return fprs, pros


def _brute_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    fprs, pros = _brute_curve(masks, maps)
    area = 0.0
    for x0, y0, x1, y1 in zip(fprs, pros, fprs[1:], pros[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def _toy(seed: int) -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 1:3, 1:4] = True  # component of 6
    masks[0, 5, 5] = masks[0, 6, 6] = True  # diagonal pair: one 8-connected component
    masks[1, 4:8, 0:2] = True  # component of 8; image 2 has no defect
    rng = np.random.default_rng(seed)
    maps = (rng.integers(0, 8, masks.shape) + 3 * masks * rng.random(masks.shape)).round(1)
    return masks, maps


def test_hand_values() -> None:
    m = np.array([[[1, 1, 0, 0]]], bool)
    a = np.array([[[0.9, 0.2, 0.5, 0.1]]])
    fpr, pro = pro_curve(m, a)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1, 1])
    assert aupro(m, a) == pytest.approx(0.5)
    assert aupro(m, a, fpr_limit=1.0) == pytest.approx(0.75)
    # 8-connectivity: {(0,0),(1,1)} is one component -> PRO 1/4 (4-connectivity would give 1/3)
    m = np.zeros((1, 4, 4), bool)
    m[0, 0, 0] = m[0, 1, 1] = m[0, 3, 3] = True
    a = np.where(m, 0.1, 0.5)
    a[0, 0, 0] = 0.9
    assert aupro(m, a) == pytest.approx(0.25)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(seed: int) -> None:
    masks, maps = _toy(seed)
    fpr, pro = pro_curve(masks, maps)
    b_fpr, b_pro = _brute_curve(masks, maps)
    np.testing.assert_allclose(fpr, b_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, b_pro, atol=1e-12)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(_brute_aupro(masks, maps, limit), abs=1e-12)


def test_perfect_and_inverted() -> None:
    masks, _ = _toy(0)
    noise = np.random.default_rng(0).random(masks.shape) * 0.5
    assert aupro(masks, masks + noise) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0, abs=1e-12)
    assert aupro(masks, 1.0 - masks + noise) == pytest.approx(0.0, abs=1e-12)


def test_never_above_one() -> None:
    for seed in range(30):
        rng = np.random.default_rng(seed)
        masks = rng.random((3, 12, 12)) < rng.uniform(0.05, 0.5)
        maps = (rng.random(masks.shape) + rng.uniform(0, 3) * masks).astype(np.float32)
        value = aupro(masks, maps, fpr_limit=rng.uniform(0.01, 1.0))
        assert 0.0 <= value <= 1.0


def test_errors() -> None:
    with pytest.raises(DataError, match="no defect pixel"):
        aupro(np.zeros((2, 4, 4), bool), np.ones((2, 4, 4)))
    m, a = _toy(0)
    with pytest.raises(ConfigError, match="fpr_limit"):
        aupro(m, a, fpr_limit=0.0)
