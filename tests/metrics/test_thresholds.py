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
