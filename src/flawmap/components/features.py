"""Batched backbone feature extraction (the one place detectors get frozen CNN features from),
with an optional on-disk feature cache shared by runs, and the one rule that puts several layers on
one grid (:func:`concat_layers`).

Runs of a sweep that share backbone, weights, layers and images (e.g. PatchCore with another
``coreset_ratio``) compute the same backbone features. The cache is passed explicitly:
``extract_features(backbone, images, cache=FeatureCache(dir))`` looks up each requested layer under
a key made of

    backbone name, weights_id (sha256 of the checkpoint), its input normalisation (mean, std), layer
    name, the sha256 of the image tensor's bytes, its shape and dtype, the device type and a cache
    format version

and only runs the backbone when a layer is missing. Entries are safetensors files written under a
temporary name and renamed (atomic), so concurrent runs (process pool, Ray workers on a shared
folder) never read a half-written entry. Without ``cache`` (the default) no file is read or
written. Detectors get their cache from ``BackboneDetector.use_feature_cache(cache)``; ``flawmap bench``
turns it on by default (``--feature-cache DIR``, default ``<out>/feature_cache``; ``--no-feature-cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ConfigError
from ..io import atomic_write
from ..progress import progress
from .backbones import FeatureExtractor

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: the key has the input normalisation (mean, std)


@dataclass
class CacheStats:
    hits: int = 0  # layer tensors read from disk
    misses: int = 0  # layer tensors computed (and written)
    backbone_calls: int = 0  # extract_features calls that ran the backbone
    compute_seconds: float = 0.0  # time spent running the backbone on misses
    load_seconds: float = 0.0  # time spent reading hits
    bytes_written: int = 0

    def snapshot(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "backbone_calls": self.backbone_calls,
                "compute_seconds": self.compute_seconds, "load_seconds": self.load_seconds,
                "bytes_written": self.bytes_written}


@dataclass
class FeatureCache:
    """A folder of cached feature tensors: ``<dir>/<backbone>/<key[:2]>/<key>.safetensors``."""

    directory: Path
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)

    @staticmethod
    def key(backbone: FeatureExtractor, layer: str, images_digest: str, shape: tuple[int, ...], dtype: torch.dtype) -> str:
        ident = {"format": CACHE_FORMAT, "backbone": backbone.name, "weights_id": backbone.weights_id,
                 "normalization": [list(backbone.mean), list(backbone.std)], "layer": layer,
                 "images_sha256": images_digest, "shape": list(shape), "dtype": str(dtype),
                 "device": backbone.device.type}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def path(self, backbone: FeatureExtractor, key: str) -> Path:
        return self.directory / backbone.name / key[:2] / f"{key}.safetensors"

    def load(self, path: Path) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return f.get_tensor("features")
        except Exception as exc:  # noqa: BLE001 - a damaged entry is a miss, recomputed and replaced
            log.warning("feature cache: unreadable entry %s (%s); recomputing", path, exc)
            return None

    def save(self, path: Path, tensor: torch.Tensor, meta: dict[str, str]) -> None:
        atomic_write(path, lambda tmp: save_file({"features": tensor.contiguous()}, str(tmp), metadata=meta))
        self.stats.bytes_written += path.stat().st_size

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*.safetensors")) if self.directory.is_dir() else 0


def images_digest(images: torch.Tensor) -> str:
    """sha256 of the raw bytes of an image tensor (contiguous CPU copy when needed)."""
    arr = images.detach().cpu().contiguous().numpy()
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).data).hexdigest()


@torch.no_grad()
def _compute(backbone: FeatureExtractor, images: torch.Tensor, batch_size: int, desc: str,
             device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    if len(images) <= batch_size:  # one batch: no slicing, so a traced graph (ONNX export) keeps a dynamic batch
        return {name: f.float().to(device) for name, f in backbone(images).items()}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in backbone.layers}
    starts = range(0, len(images), batch_size)
    for s in progress(starts, desc=desc, total=len(starts), unit="batch") if len(starts) > 1 else starts:
        feats = backbone(images[s:s + batch_size])
        for name, f in feats.items():
            out[name].append(f.float().to(device))
    return {name: torch.cat(fs) for name, fs in out.items()}


@torch.no_grad()
def extract_features(backbone: FeatureExtractor, images: torch.Tensor, *, batch_size: int = 8,
                     desc: str = "features", device: torch.device | str | None = None,
                     cache: FeatureCache | None = None) -> dict[str, torch.Tensor]:
    """images (N, 3, H, W) in [0, 1] -> {layer: (N, C_l, H/s_l, W/s_l)} float32, batch by batch.

    Features are returned on the CPU, or on ``device`` when given. With ``cache`` the layers already
    in it for these exact images are read instead of running the backbone, and the computed ones are
    written to it; without it no file is touched.
    """
    if cache is None:  # straight to the requested device (no round trip through the CPU)
        return _compute(backbone, images, batch_size, desc, "cpu" if device is None else device)
    digest = images_digest(images)
    shape, dtype = tuple(images.shape), images.dtype
    paths = {layer: cache.path(backbone, cache.key(backbone, layer, digest, shape, dtype)) for layer in backbone.layers}
    t0 = time.perf_counter()
    found = {layer: cache.load(p) for layer, p in paths.items()}
    if all(v is not None for v in found.values()):
        cache.stats.hits += len(found)
        cache.stats.load_seconds += time.perf_counter() - t0
        feats = {k: v for k, v in found.items() if v is not None}
    else:
        t1 = time.perf_counter()
        feats = _compute(backbone, images, batch_size, desc)
        cache.stats.compute_seconds += time.perf_counter() - t1
        cache.stats.backbone_calls += 1
        for layer, p in paths.items():
            if found[layer] is None:
                cache.stats.misses += 1
                meta = {"backbone": backbone.name, "weights_id": backbone.weights_id, "layer": layer,
                        "images_sha256": digest, "images_shape": json.dumps(list(shape)), "images_dtype": str(dtype)}
                cache.save(p, feats[layer], meta)
            else:
                cache.stats.hits += 1
    return feats if device is None else {k: v.to(device) for k, v in feats.items()}


def finest_grid(maps: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(h, w) of the map with the most positions among maps [(B, C_l, h_l, w_l)] (the first of equals)."""
    return tuple(max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1]))  # type: ignore[return-value]


LAYER_MODES = ("bilinear", "nearest")


def concat_layers(maps: Sequence[torch.Tensor], mode: str = "bilinear",
                  size: tuple[int, ...] | None = None) -> torch.Tensor:
    """Layer maps [(B, C_l, h_l, w_l)] -> (B, sum_l C_l, h, w): each map resized to (h, w) and the
    results concatenated along channels, in the given order.

    (h, w) is ``size``, default :func:`finest_grid` (coarser layers are upsampled to the finest one, as
    in PatchCore, PaDiM and SPADE). ``mode``: "bilinear" (align_corners=False; PatchCore, SPADE) or
    "nearest" (each coarse cell repeated over the fine cells it covers; PaDiM's reference code).
    Maps already on the grid are used as they are.
    """
    if mode not in LAYER_MODES:
        raise ConfigError(f"concat_layers: mode={mode!r}; allowed: {', '.join(LAYER_MODES)}")
    size = finest_grid(maps) if size is None else tuple(size)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    parts = [m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode=mode, **kw) for m in maps]
    return torch.cat(parts, dim=1)


__all__ = ["CacheStats", "FeatureCache", "concat_layers", "extract_features", "finest_grid", "images_digest"]
