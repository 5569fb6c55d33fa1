"""SPADE maths against a brute-force reference (loops over images and pixels) on a tiny fake backbone."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flawmap import get_detector, load_detector
from flawmap.components import gallery_knn
from flawmap.components.anomaly_map import anomaly_map
from flawmap.detectors import backbone as backbone_mod
from flawmap.errors import ConfigError

#: fake layers: name -> (stride, channels)
SPEC = {"a": (4, 3), "b": (8, 4), "c": (16, 5), "top": (32, 6)}


class FakeBackbone(torch.nn.Module):
    """Deterministic FeatureExtractor stand-in: avg-pool to the stride, fixed 1x1 mix, tanh."""

    def __init__(self, layers: tuple[str, ...]) -> None:
        super().__init__()
        self.layers = tuple(layers)
        g = torch.Generator().manual_seed(123)
        self.mix = {n: torch.randn(c, 3, generator=g) for n, (_, c) in SPEC.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: torch.tanh(torch.einsum("oc,bchw->bohw", self.mix[n], F.avg_pool2d(x, SPEC[n][0]) * 4 - 2))
                for n in self.layers}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared 2-core box, OpenMP spin-waiting with 2 threads is much slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_mod, "create_backbone", lambda name, layers, **kw: FakeBackbone(layers))


@pytest.fixture(params=["dense", "bf16-filter"])
def search_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both exact pixel-search paths, whatever this CPU would choose."""
    monkeypatch.setattr(gallery_knn, "use_bf16_filter", lambda device: request.param == "bf16-filter")
    monkeypatch.setattr(gallery_knn, "MIN_FILTER_PAIRS", 0)  # the tiny test searches too
    return request.param


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(n, 3, 64, 64)
    return (0.6 * base + 0.4 * torch.rand(n, 3, 64, 64, generator=g)).contiguous()


def brute_force(train: torch.Tensor, test: torch.Tensor, k: int, kappa: int) -> tuple[np.ndarray, np.ndarray]:
    """The definition, with explicit loops: scores (B,), patch maps (B, 16, 16)."""
    bb = FakeBackbone(("a", "b", "c", "top"))

    def feats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = bb(x)
        pyr = torch.cat([F.interpolate(f[n], size=(16, 16), mode="bilinear", align_corners=False) for n in "abc"], 1)
        return f["top"].mean(dim=(2, 3)), pyr.permute(0, 2, 3, 1).reshape(len(x), 256, -1)

    f_tr, g_tr = feats(train)
    f_te, g_te = feats(test)
    scores, maps = [], []
    for y in range(len(test)):
        d_img = torch.stack([torch.linalg.norm(f_te[y] - f_tr[i]) for i in range(len(train))])
        order = torch.argsort(d_img)[:k]
        scores.append(d_img[order].mean().item())
        patch = []
        for p in range(256):
            d_pix = torch.cat([torch.linalg.norm(g_tr[i] - g_te[y, p], dim=1) for i in order.tolist()])
            patch.append(torch.sort(d_pix).values[:kappa].mean().item())
        maps.append(patch)
    return np.array(scores), np.array(maps).reshape(-1, 16, 16)


# (3, 300, 3000): blocks of one image (256 rows) are smaller than kappa, so partial top-kappa merges are tested
@pytest.mark.parametrize(("k", "kappa", "chunk"), [(1, 1, 1 << 24), (3, 1, 3000), (4, 5, 700), (3, 300, 3000)])
def test_matches_brute_force(fake: None, search_path: str, k: int, kappa: int, chunk: int) -> None:
    train, test = _images(6, 0), _images(3, 1)
    det = get_detector("spade", layers=("a", "b", "c"), image_layer="top", k=k, kappa=kappa, chunk_size=chunk,
                       sigma=0.0, batch_size=4, device="cpu").fit(train)
    res = det.predict(test, batch_size=2)
    ref_scores, ref_patch = brute_force(train, test, k, kappa)
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-4, atol=1e-5)
    ref_maps = anomaly_map(torch.from_numpy(ref_patch).float(), (64, 64), 0.0).numpy()
    np.testing.assert_allclose(res.maps, ref_maps, rtol=1e-4, atol=1e-4)
    assert det.grid_ == [16, 16] and det.train_pixel_features_.shape == (6, 256, 12)
    assert det._index.filter is (search_path == "bf16-filter")


@pytest.mark.parametrize("kappa", [1, 3])
def test_ties_match_brute_force(fake: None, search_path: str, kappa: int) -> None:
    """Duplicated and constant training images: exactly tied gallery features everywhere."""
    train = _images(5, 0)
    train[3] = train[1]
    train[4] = 0.5
    test = torch.cat([train[1:2], torch.full((1, 3, 64, 64), 0.5), _images(1, 1)])
    det = get_detector("spade", layers=("a", "b", "c"), image_layer="top", k=3, kappa=kappa, sigma=0.0,
                       device="cpu").fit(train)
    res = det.predict(test)
    ref_scores, ref_patch = brute_force(train, test, 3, kappa)
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-4, atol=1e-5)
    # distance 0: the dense matmul form gives sqrt(fp32 cancellation) ~ 1e-3 here; the filter's check is direct
    np.testing.assert_allclose(res.maps, anomaly_map(torch.from_numpy(ref_patch).float(), (64, 64), 0.0).numpy(),
                               rtol=1e-4, atol=3e-3 if search_path == "dense" else 1e-5)


def test_k_clamped_with_warning(fake: None, search_path: str, caplog: pytest.LogCaptureFixture) -> None:
    train, test = _images(5, 0), _images(2, 1)
    with caplog.at_level(logging.WARNING, logger="flawmap.detectors.spade"):
        det = get_detector("spade", layers=("a", "b", "c"), image_layer="top", kappa=2, sigma=0.0,
                           device="cpu").fit(train)
    assert det.k == 50 and det.k_ == 5
    assert "k=50 exceeds the 5 training images" in caplog.text
    res = det.predict(test)
    ref_scores, ref_patch = brute_force(train, test, 5, 2)
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.maps, anomaly_map(torch.from_numpy(ref_patch).float(), (64, 64), 0.0).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_smoothing_and_save_load(fake: None, search_path: str, tmp_path) -> None:
    train, test = _images(6, 0), _images(2, 1)
    det = get_detector("spade", layers=("a", "b", "c"), image_layer="top", k=2, device="cpu").fit(train)
    res = det.predict(test)
    _, ref_patch = brute_force(train, test, 2, 1)
    np.testing.assert_allclose(res.maps, anomaly_map(torch.from_numpy(ref_patch).float(), (64, 64), 4.0).numpy(),
                               rtol=1e-4, atol=1e-4)
    again = load_detector(det.save(tmp_path / "m"))
    assert again.k_ == 2
    np.testing.assert_array_equal(again.predict(test).scores, res.scores)
    np.testing.assert_array_equal(again.predict(test).maps, res.maps)


def test_kappa_larger_than_gallery(fake: None) -> None:
    det = get_detector("spade", layers=("a",), image_layer="top", k=2, kappa=513, device="cpu")
    with pytest.raises(ConfigError, match=r"kappa=513 is out of range; allowed: \[1, 512\]"):
        det.fit(_images(2, 0))


@pytest.mark.parametrize(("param", "value", "match"), [
    ("k", 0, r"k=0 is out of range; allowed: \[1"),
    ("kappa", 1.5, "kappa must be an integer"),
    ("sigma", -1.0, "sigma=-1.0 is out of range"),
    ("chunk_size", 0, "chunk_size=0 is out of range"),
    ("backbone", "vgg16", "allowed values: 'efficientnet_lite0'"),
    ("layers", "a", r"layers must be None \(the stride 4, 8, 16 layers\) or a non-empty tuple"),
    ("image_layer", 3, "image_layer must be None or a layer name"),
    ("seed", -1, "seed=-1 is out of range"),
])
def test_validation(param: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_detector("spade", **{param: value}).fit(_images(2, 0))


def test_default_layers_resolved_from_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(backbone_mod, "create_backbone", lambda name, layers, **kw: seen.setdefault(name, layers))
    for name, want in [("efficientnet_lite2", ("blocks.1", "blocks.2", "blocks.4", "blocks.6")),
                       ("resnet18", ("layer1", "layer2", "layer3", "layer4"))]:
        get_detector("spade", backbone=name)._setup()
        assert seen[name] == want


def test_gallery_over_the_memory_budget_is_refused_with_advice() -> None:
    """SPADE stores every training pyramid: above the budget, one clear error before the buffer exists."""
    from flawmap import get_detector
    from flawmap.errors import ConfigError

    imgs = (torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    det = get_detector("spade", backbone="efficientnet_lite0", k=3, max_memory_gb=1e-5)
    with pytest.raises(ConfigError, match=r"12 training images.*--max-train"):
        det.fit(imgs)
    det.set_params(max_memory_gb=None)
    a = det.fit(imgs).predict(imgs[:2]).scores  # uint8 input is converted batch by batch
    b = get_detector("spade", backbone="efficientnet_lite0", k=3).fit(imgs.float() / 255).predict(imgs[:2]).scores
    np.testing.assert_allclose(a, b, rtol=1e-6)
