"""Heatmap overlays: image | anomaly map in a colour map | threshold contour. Pure numpy + PIL."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# A perceptual "inferno"-like ramp: black -> purple -> orange -> yellow (5 anchors, linear between).
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    v = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return (_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).round().astype(np.uint8)


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (H, W)."""
    m = np.pad(mask, 1, mode="edge")
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, threshold: float | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """image uint8 (H, W, 3), map (H, W) -> uint8 (H, W, 3): blended heat colours and, if a threshold
    is given, its contour in cyan."""
    norm = (amap - vmin) / max(vmax - vmin, 1e-12)
    heat = colorize(norm).astype(np.float32)
    out = (image.astype(np.float32) * (1 - alpha) + heat * alpha).round().astype(np.uint8)
    if threshold is not None:
        out[contour(amap >= threshold)] = (0, 255, 255)
    return out


def panel(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, threshold: float | None = None,
          mask: np.ndarray | None = None) -> np.ndarray:
    """Side by side: image | [ground truth] | heatmap | overlay with threshold contour."""
    norm = (amap - vmin) / max(vmax - vmin, 1e-12)
    tiles = [image]
    if mask is not None:
        tiles.append(np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2))
    tiles += [colorize(norm), overlay(image, amap, vmin, vmax, threshold)]
    sep = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    out = [tiles[0]]
    for t in tiles[1:]:
        out += [sep, t]
    return np.concatenate(out, axis=1)


def png_bytes(array: np.ndarray, optimize: bool = False) -> bytes:
    """uint8 (H, W, 3) -> PNG file bytes, in memory (``flawmap serve``, bench artifacts)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=optimize)
    return buf.getvalue()


def calibrated_panel(x: np.ndarray, amap: np.ndarray, calibration: Any | None) -> np.ndarray:
    """The panel of one scored image (image | heatmap | overlay with the defect contour) for the model
    input x (3, H, W) float in [0, 1] and its map (H, W): colour scale ``map_range`` and contour
    ``pixel_threshold`` of the calibration (``flawmap.metrics.thresholds.Calibration``); without one, the
    map's own full range and no contour. Used by ``flawmap predict`` and ``flawmap serve``."""
    from ..metrics.thresholds import map_display_range

    if calibration is None:
        lo, hi = map_display_range(amap, percentiles=(0.0, 100.0))
        return panel(to_uint8_image(x), amap, lo, hi, None)
    lo, hi = calibration.map_range
    return panel(to_uint8_image(x), amap, lo, hi, calibration.pixel_threshold)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """uint8 (H, W, 3) -> a PNG file at ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def to_uint8_image(image_chw: np.ndarray) -> np.ndarray:
    """float (3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return (np.clip(image_chw.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
