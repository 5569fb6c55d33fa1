"""The one Gaussian kernel and separable Gaussian blur (pure torch), used by anomaly maps
(components.anomaly_map), the blur corruption (data.corruptions) and the SSIM window (components.inpainting)."""

from __future__ import annotations

import math

import numpy as np
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


#: sides up to this length are blurred by a (side x side) banded matrix product, longer ones by two
#: 1D convolutions. Measured (1 thread, Sapphire Rapids, oneDNN): for 120 planes of 256 x 256 with an
#: 11-tap kernel the matrix product is 11x faster forward and 20x faster forward + backward (SSIM in
#: RIAD's loss); single-channel convolutions take oneDNN's slow path.
MATRIX_MAX_SIDE = 1024


def blur_matrix(n: int, kernel: torch.Tensor) -> torch.Tensor:
    """The (n, n) matrix B of the 1D blur of a length-n signal with ``kernel`` (2r + 1,), padding folded
    in (reflect, replicate when n <= r, as :func:`gaussian_blur`): blur(v)[i] = sum_j B[i, j] v[j].
    Built in numpy, so a traced (ONNX) graph holds it as a constant (no scatter op in the graph)."""
    k = kernel.detach().cpu().double().numpy()
    r = len(k) // 2
    src = np.arange(n)[:, None] + np.arange(-r, r + 1)  # (n, 2r+1)
    if n > r:  # reflect about the edge samples: -1 -> 1, n -> n - 2
        src = np.abs(src)
        src = np.where(src > n - 1, 2 * (n - 1) - src, src)
    else:
        src = np.clip(src, 0, n - 1)
    out = np.zeros((n, n))
    np.add.at(out, (np.broadcast_to(np.arange(n)[:, None], src.shape), src), np.broadcast_to(k, src.shape))
    return torch.from_numpy(out).to(device=kernel.device, dtype=kernel.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian smoothing over the last two dims of x (..., H, W), reflect padding (replicate on a
    side not longer than the radius); same shape and dtype out. sigma <= 0 returns x unchanged."""
    if sigma <= 0:
        return x
    shape = x.shape
    h, w = shape[-2:]
    if max(h, w) <= MATRIX_MAX_SIDE and not torch.jit.is_tracing():  # y = B_H x B_W^T: two matrix products, padding inside B
        # (not while tracing for ONNX export: the traced matrix path gave wrong maps, so export takes the conv path below)
        k64 = gaussian_kernel1d(sigma, truncate, radius, device=x.device, dtype=torch.float64)
        b_w = blur_matrix(w, k64).to(x.dtype)
        b_h = b_w if h == w else blur_matrix(h, k64).to(x.dtype)
        y = torch.matmul(x.reshape(-1, h, w), b_w.t())  # (N, H, W): rows blurred
        return torch.matmul(b_h, y).reshape(shape)
    k = gaussian_kernel1d(sigma, truncate, radius, device=x.device, dtype=x.dtype)
    r = len(k) // 2
    y = x.reshape(-1, 1, h, w)  # every leading index is one channel
    y = F.conv2d(_pad(y, (r, r, 0, 0), w, r), k.view(1, 1, 1, -1))
    y = F.conv2d(_pad(y, (0, 0, r, r), h, r), k.view(1, 1, -1, 1))
    return y.reshape(shape)


__all__ = ["blur_matrix", "gaussian_blur", "gaussian_kernel1d"]
