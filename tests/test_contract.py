"""The contract every registered detector keeps (scikit-learn/PyOD style estimator checks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import flawmap
from flawmap import get_detector, list_detectors, load_detector
from flawmap.errors import ConfigError, NotFittedError
from flawmap.registry import detector_class

from .conftest import TEST_DEVICE

#: the five published methods; the contract tests below run over exactly these
METHODS = ("fastflow", "padim", "patchcore", "riad", "spade")
DETECTORS = list_detectors()


def make(name: str, **extra: object) -> flawmap.BaseDetector:
    params = {**detector_class(name).tiny_params(), "device": TEST_DEVICE, **extra}
    return get_detector(name, **params)


def test_detectors_run_on_the_test_device(fitted) -> None:
    """FLAWMAP_TEST_DEVICE (default cpu) is where every contract check runs."""
    want = torch.device(TEST_DEVICE)
    for name, det in fitted.items():
        assert det.device_.type == want.type, name


@pytest.fixture(scope="module")
def fitted(tiny_data):
    """One fitted instance per detector, shared by the read-only checks."""
    train, _ = tiny_data
    return {name: make(name).fit(train.images) for name in DETECTORS}


def test_all_methods_registered() -> None:
    assert tuple(DETECTORS) == METHODS


def test_a_detector_module_that_fails_to_import_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from flawmap import registry

    real = importlib.import_module

    def broken(name: str, *a: object):
        if name == "flawmap.detectors.spade":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a)

    monkeypatch.setattr(registry.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="flawmap.detectors.spade"):
        registry.list_detectors()


@pytest.mark.parametrize("name", DETECTORS)
def test_constructor_only_stores(name: str) -> None:
    cls = detector_class(name)
    defaults = cls.default_params()
    det = cls()
    assert det.get_params() == defaults
    for k, v in defaults.items():  # immutable defaults only
        assert not isinstance(v, (list, dict, set)), f"{name}.{k} has a mutable default {v!r}"
    assert not det.is_fitted()
    assert not [k for k in vars(det) if k.endswith("_")], "constructor must not set learned state"
    with pytest.raises(ConfigError, match="allowed"):
        get_detector(name, definitely_not_a_param=1)


@pytest.mark.parametrize("name", DETECTORS)
def test_predict_before_fit_raises(name: str, tiny_data) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        make(name).predict(tiny_data[1].images[:1])


@pytest.mark.parametrize("name", DETECTORS)
def test_bad_parameter_fails_at_fit_with_allowed_values(name: str, tiny_data) -> None:
    det = make(name, seed=-1)  # constructing with a bad value is fine; fit validates
    with pytest.raises(ConfigError, match="seed"):
        det.fit(tiny_data[0].images)


@pytest.mark.parametrize("name", DETECTORS)
def test_fit_returns_self_and_shapes(name: str, fitted, tiny_data) -> None:
    det = fitted[name]
    assert det.is_fitted()
    test = tiny_data[1]
    res = det.predict(test.images)
    n, _, h, w = test.images.shape
    assert res.scores.shape == (n,) and res.maps.shape == (n, h, w)
    assert res.scores.dtype == np.float32 and res.maps.dtype == np.float32
    assert np.isfinite(res.scores).all() and np.isfinite(res.maps).all()
    det2 = make(name)
    assert det2.fit(tiny_data[0].images[:4]) is det2


@pytest.mark.parametrize("name", DETECTORS)
def test_deterministic_under_seed(name: str, fitted, tiny_data) -> None:
    train, test = tiny_data
    a = fitted[name].predict(test.images)
    b = make(name).fit(train.images).predict(test.images)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DETECTORS)
def test_batch_size_independent(name: str, fitted, tiny_data) -> None:
    x = tiny_data[1].images[:5]
    a = fitted[name].predict(x, batch_size=1)
    b = fitted[name].predict(x, batch_size=5)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", DETECTORS)
def test_save_load_identical(name: str, fitted, tiny_data, tmp_path: Path) -> None:
    det = fitted[name]
    path = det.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    again = load_detector(path)
    x = tiny_data[1].images
    a, b = det.predict(x), again.predict(x)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert again.get_params() == det.get_params()


@pytest.mark.parametrize("name", DETECTORS)
def test_pasted_defect_scores_above_clean(name: str, fitted, tiny_data) -> None:
    """Paste a patch of foreign texture onto a good image: score and map must rise there."""
    test = tiny_data[1]
    clean = test.images[test.labels == 0][:1]
    g = torch.Generator().manual_seed(1)
    pasted = clean.clone()
    pasted[:, :, 20:36, 24:40] = torch.rand(1, 3, 16, 16, generator=g)  # noisy square
    res = fitted[name].predict(torch.cat([clean, pasted]))
    assert res.scores[1] > res.scores[0]
    inside = res.maps[1, 20:36, 24:40].mean()
    assert inside > res.maps[0, 20:36, 24:40].mean()
    assert inside > np.median(res.maps[1])


@pytest.mark.parametrize("name", [n for n in DETECTORS if "normalization" in detector_class(n).param_names()])
def test_backbone_normalization_is_a_parameter(name: str, tiny_data) -> None:
    assert detector_class(name).default_params()["normalization"] == "weights"
    with pytest.raises(ConfigError, match="normalization='tf' is not allowed; allowed values: 'weights', 'imagenet'"):
        make(name, normalization="tf").fit(tiny_data[0].images)
    det = make(name, normalization="imagenet")
    det.validate_params()
    det._setup()
    assert det._backbone.mean == (0.485, 0.456, 0.406)
