"""Patch scores -> pixel anomaly maps: bilinear upsampling and Gaussian smoothing (sigma 4 in
SPADE, PaDiM and PatchCore)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian, radius = ceil(4 sigma) (as scipy.ndimage.gaussian_filter, truncate=4)."""
    radius = max(1, int(math.ceil(4.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of maps (N, H, W) with reflect padding; sigma <= 0 is a no-op."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.device)
    r = len(k) // 2
    x = maps.unsqueeze(1)  # (N, 1, H, W)
    mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x.squeeze(1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps (N, h, w) -> (N, H, W)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def anomaly_map(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Patch-grid scores (N, h, w) -> smoothed pixel map (N, H, W)."""
    return gaussian_blur(upsample(patch_scores.float(), size), sigma)
