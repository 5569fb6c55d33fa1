"""The one Gaussian (flawmap.filters): kernel and separable blur against scipy.ndimage, and the three users
(anomaly maps, the blur corruption, the SSIM window) go through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from flawmap.errors import ConfigError
from flawmap.filters import gaussian_blur, gaussian_kernel1d

SRC = Path(__file__).resolve().parents[2] / "src" / "flawmap"


def test_kernel_is_normalised_with_scipys_radius() -> None:
    k = gaussian_kernel1d(1.5)
    assert k.shape == (13,) and k.dtype == torch.float32  # radius ceil(4 * 1.5) = 6
    assert float(k.sum()) == pytest.approx(1.0) and int(k.argmax()) == 6
    assert gaussian_kernel1d(1.5, truncate=3.0).shape == (11,) and gaussian_kernel1d(1.5, radius=5).shape == (11,)
    x = np.arange(-6, 7, dtype=np.float64)
    np.testing.assert_allclose(k.numpy(), np.exp(-x**2 / 4.5) / np.exp(-x**2 / 4.5).sum(), rtol=1e-6)
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        gaussian_kernel1d(0.0)


@pytest.mark.parametrize("sigma,truncate", [(0.7, 4.0), (2.0, 4.0), (1.3, 3.0)])
def test_blur_equals_scipy_gaussian_filter(sigma: float, truncate: float) -> None:
    x = torch.rand(2, 3, 23, 31, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = np.stack([[ndimage.gaussian_filter(c, sigma, mode="mirror", truncate=truncate) for c in b] for b in x.numpy()])
    out = gaussian_blur(x, sigma, truncate=truncate)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert gaussian_blur(x, 0.0) is x


def test_tiny_sides_fall_back_to_replicate_padding() -> None:
    x = torch.rand(1, 4, 40)
    out = gaussian_blur(x, 2.0)  # radius 8 > height 4: the height is padded by replication
    rows = ndimage.gaussian_filter1d(x[0].numpy().astype(np.float64), 2.0, axis=1, mode="mirror", truncate=4.0)
    ref = ndimage.gaussian_filter1d(rows, 2.0, axis=0, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_the_users_call_the_one_gaussian(monkeypatch: pytest.MonkeyPatch) -> None:
    import flawmap.components.anomaly_map as am
    import flawmap.components.inpainting as ip
    import flawmap.data.corruptions as co

    calls: list[tuple[float, float, int | None]] = []

    def spy(x, sigma, truncate=4.0, radius=None):
        calls.append((sigma, truncate, radius))
        return gaussian_blur(x, sigma, truncate, radius)

    monkeypatch.setattr(am, "gaussian_blur", spy)
    monkeypatch.setattr(ip, "gaussian_blur", spy)
    monkeypatch.setattr(co, "gaussian_blur_filter", spy)
    am.anomaly_map(torch.rand(1, 4, 4), (16, 16), sigma=4.0)
    ip.ssim_map(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    co.gaussian_blur(torch.rand(1, 3, 64, 64), 5)
    assert calls[0] == (4.0, 4.0, None) and calls[1] == (1.5, 4.0, 5) and calls[-1] == (1.0, 3.0, None)
    # and no other Gaussian formula is left in the package
    hits = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "torch.exp(-0.5" in p.read_text()]
    assert hits == ["filters.py"], hits
