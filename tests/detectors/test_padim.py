"""PaDiM maths against numpy (np.cov, explicit Mahalanobis) on a tiny fake backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flawmap import get_detector, load_detector
from flawmap.components import gaussian as gs
from flawmap.components.anomaly_map import anomaly_map
from flawmap.detectors import backbone as backbone_mod, padim as padim_mod
from flawmap.errors import ConfigError

#: fake layers: name -> (stride, channels); 12 channels in all
SPEC = {"a": (4, 3), "b": (8, 4), "c": (16, 5)}
LAYERS = ("a", "b", "c")


class FakeBackbone(torch.nn.Module):
    """Deterministic FeatureExtractor stand-in: avg-pool to the stride, fixed 1x1 mix, tanh."""

    def __init__(self, layers: tuple[str, ...]) -> None:
        super().__init__()
        self.layers = tuple(layers)
        g = torch.Generator().manual_seed(7)
        self.mix = {n: torch.randn(c, 3, generator=g) for n, (_, c) in SPEC.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: torch.tanh(torch.einsum("oc,bchw->bohw", self.mix[n], F.avg_pool2d(x, SPEC[n][0]) * 4 - 2))
                for n in self.layers}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_mod, "create_backbone", lambda name, layers, **kw: FakeBackbone(layers))


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(n, 3, size, size)
    return (0.6 * base + 0.4 * torch.rand(n, 3, size, size, generator=g)).contiguous()


def _padim(**kw: object):
    return get_detector("padim", **{"layers": LAYERS, "n_features": 7, "device": "cpu", **kw})


def numpy_reference(train: torch.Tensor, test: torch.Tensor, channels: np.ndarray, eps: float = 0.01) -> np.ndarray:
    """Embeddings (nearest upsampling, chosen channels), np.cov per position, explicit Mahalanobis -> (B, h, w)."""
    bb = FakeBackbone(LAYERS)

    def embed(x: torch.Tensor) -> np.ndarray:
        f = bb(x)
        size = f["a"].shape[-2:]
        e = torch.cat([F.interpolate(f[n], size=size, mode="nearest") for n in LAYERS], 1)[:, channels]
        return e.double().numpy()  # (N, d, h, w)

    e_tr, e_te = embed(train), embed(test)
    _, d, h, w = e_tr.shape
    out = np.zeros((len(test), h, w))
    for i in range(h):
        for j in range(w):
            mu = e_tr[:, :, i, j].mean(axis=0)
            cov = np.cov(e_tr[:, :, i, j], rowvar=False) + eps * np.eye(d)
            prec = np.linalg.inv(cov)
            for b in range(len(test)):
                delta = e_te[b, :, i, j] - mu
                out[b, i, j] = np.sqrt(delta @ prec @ delta)
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 20])
def test_matches_numpy_reference(fake: None, batch_size: int) -> None:
    train, test = _images(20, 0), _images(3, 1)
    det = _padim(sigma=0.0, batch_size=batch_size).fit(train)
    channels = det.channel_idx_.numpy()
    assert len(channels) == 7 and (np.diff(channels) > 0).all() and channels.max() < 12
    ref = numpy_reference(train, test, channels)  # (3, 8, 8)
    res = det.predict(test)
    np.testing.assert_allclose(res.maps, anomaly_map(torch.from_numpy(ref).float(), (32, 32), 0.0).numpy(),
                               rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(res.scores, res.maps.max(axis=(1, 2)), rtol=1e-6)
    assert det.grid_ == [8, 8] and det.mean_.shape == (64, 7) and det.inv_chol_.shape == (64, 7, 7)


def test_streaming_fit_equals_batch_fit(fake: None) -> None:
    train = _images(11, 0)
    a, b = _padim(batch_size=11).fit(train), _padim(batch_size=2).fit(train)
    torch.testing.assert_close(a.mean_, b.mean_, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.inv_chol_, b.inv_chol_, rtol=1e-4, atol=1e-4)


def test_smoothing_max_and_save_load(fake: None, tmp_path) -> None:
    train, test = _images(12, 0), _images(2, 1)
    det = _padim().fit(train)
    res = det.predict(test)
    ref = numpy_reference(train, test, det.channel_idx_.numpy())
    ref_maps = anomaly_map(torch.from_numpy(ref).float(), (32, 32), 4.0).numpy()
    np.testing.assert_allclose(res.maps, ref_maps, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(res.scores, ref_maps.max(axis=(1, 2)), rtol=2e-4)
    again = load_detector(det.save(tmp_path / "m"))
    np.testing.assert_array_equal(again.predict(test).scores, res.scores)
    np.testing.assert_array_equal(again.predict(test).maps, res.maps)


def test_channel_subset_is_seeded(fake: None) -> None:
    train = _images(4, 0)
    a, b, c = _padim().fit(train), _padim().fit(train), _padim(seed=1).fit(train)
    assert torch.equal(a.channel_idx_, b.channel_idx_) and not torch.equal(a.channel_idx_, c.channel_idx_)
    assert len(_padim(n_features=None).fit(train).channel_idx_) == 12  # not a paper backbone: all channels


def test_layer_subset(fake: None) -> None:
    det = _padim(layers=("b", "c"), n_features=9).fit(_images(4, 0))
    assert det.grid_ == [4, 4] and det.channel_idx_.max() < 9


def test_too_many_features(fake: None) -> None:
    with pytest.raises(ConfigError, match=r"n_features=13 is out of range; allowed: \[1, 12\]"):
        _padim(n_features=13).fit(_images(4, 0))


def test_impossible_memory_fails_early(fake: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gs, "available_memory_bytes", lambda device: 1000)
    calls = []
    monkeypatch.setattr(FakeBackbone, "__call__", lambda self, x: calls.append(len(x)) or self.forward(x))
    with pytest.raises(ConfigError, match=r"padim: 64 positions x 7x7 float32 matrices need 0\.00 GiB .* free on cpu"):
        _padim(batch_size=2).fit(_images(10, 0))
    assert calls == [2]  # failed after the first batch, before the rest was extracted


def test_predict_on_other_size_fails(fake: None) -> None:
    det = _padim().fit(_images(4, 0))
    with pytest.raises(ConfigError, match="training size"):
        det.predict(_images(1, 0, size=64))


def test_needs_two_images(fake: None) -> None:
    with pytest.raises(ConfigError, match="at least 2 training images"):
        _padim().fit(_images(1, 0))


@pytest.mark.parametrize(("param", "value", "match"), [
    ("n_features", 0, r"n_features=0 is out of range; allowed: \[1"),
    ("eps", 0.0, r"eps=0.0 is out of range; allowed: \(0"),
    ("sigma", -1.0, "sigma=-1.0 is out of range"),
    ("batch_size", 0, "batch_size=0 is out of range"),
    ("backbone", "vgg16", "allowed values: 'efficientnet_lite0'"),
    ("layers", (), r"layers must be None \(the stride 4, 8, 16 layers\) or a non-empty tuple"),
    ("seed", -1, "seed=-1 is out of range"),
])
def test_validation(param: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_detector("padim", **{param: value}).fit(_images(2, 0))


def test_paper_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(backbone_mod, "create_backbone", lambda name, layers, **kw: seen.setdefault(name, layers))
    for name, want in [("efficientnet_lite2", ("blocks.1", "blocks.2", "blocks.4")),
                       ("wide_resnet50_2", ("layer1", "layer2", "layer3"))]:
        get_detector("padim", backbone=name)._setup()
        assert seen[name] == want
    assert padim_mod.DEFAULT_N_FEATURES["resnet18"] == 100 and padim_mod.DEFAULT_N_FEATURES["wide_resnet50_2"] == 550
