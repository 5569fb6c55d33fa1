"""Batched backbone feature extraction (the one place detectors get frozen CNN features from)."""

from __future__ import annotations

import torch

from ..progress import progress
from .backbones import FeatureExtractor


@torch.no_grad()
def extract_features(backbone: FeatureExtractor, images: torch.Tensor, *, batch_size: int = 8,
                     desc: str = "features") -> dict[str, torch.Tensor]:
    """images (N, 3, H, W) in [0, 1] -> {layer: (N, C_l, H/s_l, W/s_l)} float32 on CPU, batch by batch."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in backbone.layers}
    starts = range(0, len(images), batch_size)
    for s in progress(starts, desc=desc, total=len(starts), unit="batch"):
        feats = backbone(images[s:s + batch_size])
        for name, f in feats.items():
            out[name].append(f.float().cpu())
    return {name: torch.cat(fs) for name, fs in out.items()}
