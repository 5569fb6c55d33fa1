"""Patch scores -> pixel anomaly maps: bilinear upsampling and Gaussian smoothing (sigma 4 in
SPADE, PaDiM and PatchCore)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..filters import gaussian_blur


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resize of maps (N, h, w) -> (N, H, W)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def anomaly_map(patch_scores: torch.Tensor, size: tuple[int, ...], sigma: float = 4.0) -> torch.Tensor:
    """Patch-grid scores (N, h, w) -> smoothed pixel map (N, H, W): Gaussian radius ceil(4 sigma) (scipy's
    truncate=4), reflect padding (flawmap.filters.gaussian_blur); sigma <= 0: no smoothing."""
    return gaussian_blur(upsample(patch_scores.float(), size), sigma, truncate=4.0)
