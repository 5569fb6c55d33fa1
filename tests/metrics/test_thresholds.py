import json

import numpy as np
import pytest

from flawmap.errors import ConfigError, NotFittedError
from flawmap.metrics import MinMaxNormalizer, apply_threshold, f1_threshold, threshold_from_good


def test_minmax_normalizer() -> None:
    norm = MinMaxNormalizer().fit(np.array([2.0, 4.0, 6.0]))
    out = norm.transform(np.array([0.0, 2.0, 3.0, 6.0, 10.0], np.float32))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 1.0, 1.0])
    assert out.dtype == np.float32
    restored = MinMaxNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert restored == MinMaxNormalizer(2.0, 6.0)
    np.testing.assert_array_equal(MinMaxNormalizer().fit([3.0, 3.0]).transform([2.0, 3.0, 4.0]), [0, 0, 1])
    with pytest.raises(NotFittedError):
        MinMaxNormalizer().transform([1.0])
    with pytest.raises(ConfigError):
        MinMaxNormalizer.from_dict({"kind": "minmax", "low": 5.0, "high": 1.0})


def test_thresholds() -> None:
    assert threshold_from_good(np.arange(101.0), 0.99) == pytest.approx(99.0)
    assert f1_threshold([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.7, 0.2]) == pytest.approx(0.2)
    np.testing.assert_array_equal(apply_threshold([0.1, 0.2, 0.3], 0.2), [False, True, True])
    with pytest.raises(ConfigError):
        threshold_from_good([1.0], 1.5)


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
    assert map_display_range(maps, headroom=2.0) == pytest.approx((10.0, 1998.0))
    assert map_display_range(maps, percentiles=(0, 100)) == (0.0, 1000.0)
    with pytest.raises(ConfigError, match="percentiles"):
        map_display_range(maps, percentiles=(50, 10))
    with pytest.raises(ConfigError, match="headroom"):
        map_display_range(maps, headroom=0)
