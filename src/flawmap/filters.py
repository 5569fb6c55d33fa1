"""The one Gaussian kernel and separable Gaussian blur (pure torch), used by anomaly maps
(components.anomaly_map), the blur corruption (data.corruptions) and the SSIM window (components.inpainting)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, radius: int | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1D Gaussian exp(-x^2 / (2 sigma^2)) on x = -r..r, (2r + 1,).

    r = ``radius`` when given, else max(1, ceil(truncate * sigma)) (scipy.ndimage.gaussian_filter's rule).
    """
    if not sigma > 0:
        raise ConfigError(f"gaussian_kernel1d: sigma must be > 0; got {sigma}")
    r = max(1, int(math.ceil(truncate * sigma))) if radius is None else int(radius)
    if r < 0:
        raise ConfigError(f"gaussian_kernel1d: radius must be >= 0; got {radius}")
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int], size: int, r: int) -> torch.Tensor:
    # reflect needs the padding to be smaller than the side; tiny sides fall back to replicate
    return F.pad(x, pad, mode="reflect" if size > r else "replicate")


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian smoothing over the last two dims of x (..., H, W), reflect padding (replicate on a
    side not longer than the radius); same shape and dtype out. sigma <= 0 returns x unchanged."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, truncate, radius, device=x.device, dtype=x.dtype)
    r = len(k) // 2
    shape = x.shape
    h, w = shape[-2:]
    y = x.reshape(-1, 1, h, w)  # every leading index is one channel
    y = F.conv2d(_pad(y, (r, r, 0, 0), w, r), k.view(1, 1, 1, -1))
    y = F.conv2d(_pad(y, (0, 0, r, r), h, r), k.view(1, 1, -1, 1))
    return y.reshape(shape)


__all__ = ["gaussian_blur", "gaussian_kernel1d"]
