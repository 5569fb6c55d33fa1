"""A deterministic synthetic dataset in the exact MVTec AD layout (no download needed).

"texture*" categories: a stationary texture (smoothed noise + oriented stripes, random phase per image).
"object*" categories: a centered disk with a ring on a plain background, jittered per image.
"hard*" categories: an asymmetric part (rounded plate with a hole and a notch) at a random rotation
and position on a softly lit background, with small, low-contrast defects (a faint short scratch, a
shallow dent, a slight tint; each under ~1% of the image, a few grey levels against its surroundings).
Defects are pasted with exact binary masks (the mask is exactly the set of pixels that were changed):
scratches (thin dark or bright polylines), blobs (ellipses of another texture/colour at similar
brightness) and colour spots (hue change at the same luminance).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ..errors import ConfigError, DataError
from ..io import atomic_create_dir

logger = logging.getLogger(__name__)

#: bump whenever the generated files change: the cached default dataset lives in a folder of this name,
#: so an old copy is never reused (it stays where it is; a new folder is generated next to it)
SYNTHETIC_VERSION = "synthetic-v2"
#: the categories of the embedded default dataset (``ensure_synthetic_dataset``)
DEFAULT_CATEGORIES: tuple[str, ...] = ("texture", "object", "hard")
DEFECT_TYPES: tuple[str, ...] = ("scratch", "blob", "color")
_MARKER = ".flawmap-synthetic.json"
#: "hard" defects: relative brightness change of a scratch / dent, share of the tint mixed into a colour
#: spot, semi-axes of dents and spots as fractions of the image side
SUBTLE_CONTRAST = 0.2
_SUBTLE_TINT = 0.5
_SUBTLE_RADII = (0.025, 0.04)
_LUMA = np.array([0.299, 0.587, 0.114])
_Grid = tuple[np.ndarray, np.ndarray]


def _kind(category: str) -> str:
    for kind in ("texture", "object", "hard"):
        if category.startswith(kind):
            return kind
    raise ConfigError(f"synthetic category {category!r} must start with 'texture', 'object' or 'hard'")


def _hue(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A random colour with channels in [lo, hi] (one channel at each end: clearly saturated)."""
    c = np.array([lo, hi, rng.uniform(lo, hi)])
    return rng.permutation(c)


def _texture(rng: np.random.Generator, cat: np.random.Generator, size: int, grid: _Grid) -> np.ndarray:
    """Stationary texture; `cat` draws the category-wide parameters (same for every image)."""
    base = _hue(cat, 0.35, 0.6)
    angle = cat.uniform(0, np.pi) + rng.normal(0, 0.03)
    period = size / cat.uniform(9, 13)
    yy, xx = grid
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    noise = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 96)
    noise /= noise.std() + 1e-8
    shade = 1.0 + 0.22 * stripes + 0.12 * noise + rng.normal(0, 0.03)
    return base[None, None, :] * shade[..., None]


def _object(
    rng: np.random.Generator, cat: np.random.Generator, size: int, grid: _Grid
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A disk with a ring on a plain background; returns the image and (cy, cx, radius)."""
    body, ring = _hue(cat, 0.45, 0.8), _hue(cat, 0.15, 0.35)
    yy, xx = grid
    cy, cx = size / 2 + rng.normal(0, size / 100, 2)
    r = size * 0.32 * (1 + rng.normal(0, 0.01))
    d = np.hypot(yy - cy, xx - cx)
    disk = np.clip(r - d + 0.5, 0, 1)[..., None]
    in_ring = (np.clip(0.75 * r - d + 0.5, 0, 1) - np.clip(0.6 * r - d + 0.5, 0, 1))[..., None]
    shade = (1.0 - 0.25 * (d / r) ** 2)[..., None] * (1 + rng.normal(0, 0.03))
    img = np.full((size, size, 3), 0.18) + rng.normal(0, 0.006, (size, size, 1))
    img = img * (1 - disk) + disk * (body * shade * (1 - in_ring) + ring * in_ring)
    return img, (cy, cx, r)


def _part(
    rng: np.random.Generator, cat: np.random.Generator, size: int, grid: _Grid
) -> tuple[np.ndarray, tuple[float, float, float, float, float]]:
    """An asymmetric part (rounded plate, a hole near one end, a notch at the other, a dark band) at a
    uniformly random rotation and a random position, under a randomly oriented soft light gradient.
    Returns the image and the pose (cy, cx, angle, half_length, half_width) in pixels / radians."""
    body, band = _hue(cat, 0.45, 0.75), _hue(cat, 0.2, 0.4)
    yy, xx = grid
    theta = rng.uniform(0, 2 * np.pi)
    hl, hw, rc = 0.26 * size, 0.15 * size, 0.06 * size  # half length, half width, corner radius
    cy, cx = rng.uniform(0.36 * size, 0.64 * size, 2)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # part coordinates (along, across)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    qu, qv = np.abs(u) - (hl - rc), np.abs(v) - (hw - rc)
    sdf = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0) - rc
    inside = np.clip(0.5 - sdf, 0, 1)
    for du, rad in ((0.55 * hl, 0.045 * size), (-hl, 0.05 * size)):  # the hole, the notch
        inside = inside * np.clip(np.hypot(u - du, v) - rad + 0.5, 0, 1)
    in_band = (np.clip(0.02 * size - np.abs(u + 0.3 * hl) + 0.5, 0, 1) * inside)[..., None]
    light_dir = rng.uniform(0, 2 * np.pi)
    light = 1 + 0.08 * ((xx - size / 2) * np.cos(light_dir) + (yy - size / 2) * np.sin(light_dir)) / size
    shade = ((1.0 - 0.15 * (u / hl) ** 2) * light * (1 + rng.normal(0, 0.02)))[..., None]
    img = (0.25 * light)[..., None] + rng.normal(0, 0.006, (size, size, 1))
    surface = body * shade * (1 - in_band) + band * shade * in_band
    img = img * (1 - inside[..., None]) + inside[..., None] * surface
    return np.broadcast_to(img, (size, size, 3)).copy(), (cy, cx, theta, hl, hw)


def _polyline_mask(rng: np.random.Generator, size: int, center: np.ndarray, grid: _Grid,
                   subtle: bool = False) -> np.ndarray:
    yy, xx = grid
    width = max(1.5, size / 85) if subtle else max(2.0, size / 56)
    first, step, n = ((0.02, 0.03), (0.025, 0.04), 2) if subtle else ((0.08, 0.12), (0.07, 0.12), 3)
    a = rng.uniform(0, np.pi)
    pts = [center - size * rng.uniform(*first) * np.array([np.sin(a), np.cos(a)])]
    for _ in range(n):
        a += rng.normal(0, 0.35)
        pts.append(pts[-1] + size * rng.uniform(*step) * np.array([np.sin(a), np.cos(a)]))
    mask = np.zeros((size, size), dtype=bool)
    for p, q in zip(pts[:-1], pts[1:]):
        v = q - p
        t = np.clip(((yy - p[0]) * v[0] + (xx - p[1]) * v[1]) / (v @ v), 0, 1)
        mask |= np.hypot(yy - p[0] - t * v[0], xx - p[1] - t * v[1]) <= width / 2
    return mask


def _ellipse_mask(rng: np.random.Generator, size: int, center: np.ndarray, grid: _Grid, lo: float, hi: float) -> np.ndarray:
    yy, xx = grid
    a, b = size * rng.uniform(lo, hi, 2)
    th = rng.uniform(0, np.pi)
    u = (yy - center[0]) * np.cos(th) + (xx - center[1]) * np.sin(th)
    v = -(yy - center[0]) * np.sin(th) + (xx - center[1]) * np.cos(th)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _add_defect(img: np.ndarray, kind: str, rng: np.random.Generator, center: np.ndarray, grid: _Grid,
                subtle: bool = False) -> np.ndarray:
    """Paint a defect in place; return its exact mask (the only pixels that were changed).

    subtle: small (each under ~1% of the image) and low-contrast (a scratch or dent SUBTLE_CONTRAST = 20%
    darker or brighter than the surface under it, a tint mixed 50% into the surface colour at its luminance).
    """
    size = img.shape[0]
    if kind == "scratch":
        mask = _polyline_mask(rng, size, center, grid, subtle)
        if subtle:
            img[mask] = np.clip(img[mask] * (1 + SUBTLE_CONTRAST * rng.choice((-1, 1))), 0, 1)
        else:
            img[mask] = 0.04 if rng.random() < 0.5 else 0.96
    elif kind == "blob":
        if subtle:  # a shallow dent: a uniformly darker or brighter spot
            mask = _ellipse_mask(rng, size, center, grid, *_SUBTLE_RADII)
            img[mask] = np.clip(img[mask] * (1 + SUBTLE_CONTRAST * rng.choice((-1, 1))), 0, 1)
            return mask
        mask = _ellipse_mask(rng, size, center, grid, 0.05, 0.1)
        tint, lum = _hue(rng, 0.2, 1.0), float((img[mask] @ _LUMA).mean()) if mask.any() else 0.5
        speckle = rng.uniform(0.5, 1.5, (size, size, 1))[mask]  # high-frequency speckle in another colour
        img[mask] = np.clip(tint / (tint @ _LUMA) * lum * speckle, 0, 1)
    elif kind == "color":
        mask = _ellipse_mask(rng, size, center, grid, *(_SUBTLE_RADII if subtle else (0.05, 0.09)))
        tint = _hue(rng, 0.25, 1.0)
        shifted = np.clip((img[mask] @ _LUMA)[:, None] * tint / (tint @ _LUMA), 0, 1)
        img[mask] = (1 - _SUBTLE_TINT) * img[mask] + _SUBTLE_TINT * shifted if subtle else shifted
    else:
        raise ConfigError(f"unknown synthetic defect type {kind!r}; allowed: {DEFECT_TYPES}")
    return mask


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def _make_category(root: Path, name: str, n_train: int, n_good: int, n_defect: int, size: int, seed: int) -> None:
    key = zlib.crc32(name.encode())
    grid = np.mgrid[0:size, 0:size].astype(np.float64)
    grid_t: _Grid = (grid[0], grid[1])
    plan = [("train", "good", i) for i in range(n_train)] + [("test", "good", i) for i in range(n_good)]
    plan += [("test", DEFECT_TYPES[i % len(DEFECT_TYPES)], i // len(DEFECT_TYPES)) for i in range(n_defect)]
    for k, (split, dtype, idx) in enumerate(plan):
        rng = np.random.default_rng([seed, key, k])  # one stream per image
        cat = np.random.default_rng([seed, key])
        if _kind(name) == "texture":
            img = _texture(rng, cat, size, grid_t)
            center = rng.uniform(0.25 * size, 0.75 * size, 2)
        elif _kind(name) == "object":
            img, (cy, cx, r) = _object(rng, cat, size, grid_t)
            ang, rad = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0.0, 0.45))
            center = np.array([cy + rad * np.sin(ang), cx + rad * np.cos(ang)])
        else:  # a point on the plate, away from the hole: (along, across) in part coordinates, rotated
            img, (cy, cx, th, hl, hw) = _part(rng, cat, size, grid_t)
            pu, pv = rng.uniform(-0.65 * hl, 0.25 * hl), rng.uniform(-0.55 * hw, 0.55 * hw)
            center = np.array([cy + pu * np.sin(th) + pv * np.cos(th), cx + pu * np.cos(th) - pv * np.sin(th)])
        subtle = _kind(name) == "hard"
        mask = _add_defect(img, dtype, rng, center, grid_t, subtle) if dtype != "good" else None
        _save(root / name / split / dtype / f"{idx:03d}.png", np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))
        if mask is not None:
            _save(root / name / "ground_truth" / dtype / f"{idx:03d}_mask.png", mask.astype(np.uint8) * 255)


def make_synthetic_mvtec(root: str | PathLike[str], *, categories: Sequence[str] = ("texture", "object"),
                         n_train: int = 20, n_test_good: int = 6, n_test_defect: int = 8, size: int = 128,
                         seed: int = 0) -> Path:
    """Write categories in MVTec layout under root (same seed -> byte-identical files); returns root.

    n_test_defect defective test images per category are spread round-robin over scratch, blob, color.
    """
    for name, v, lo in (("n_train", n_train, 1), ("n_test_good", n_test_good, 1), ("n_test_defect", n_test_defect, 0),
                        ("size", size, 32), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"make_synthetic_mvtec: {name} must be an int >= {lo}; got {v!r}")
    if not categories or len(set(categories)) != len(categories):
        raise ConfigError(f"make_synthetic_mvtec: categories must be non-empty and unique; got {list(categories)}")
    for c in categories:
        _kind(c)
    root = Path(root)
    for c in categories:
        if (root / c).exists():
            raise DataError(f"refusing to overwrite existing category folder {root / c}")
    for c in categories:
        _make_category(root, c, n_train, n_test_good, n_test_defect, size, seed)
    logger.info("wrote synthetic MVTec categories %s under %s", list(categories), root)
    return root


def default_synthetic_root() -> Path:
    """$FLAWMAP_DATA_HOME/<SYNTHETIC_VERSION>, or ~/.cache/flawmap/<SYNTHETIC_VERSION> (synthetic-v2)."""
    home = os.environ.get("FLAWMAP_DATA_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "flawmap") / SYNTHETIC_VERSION


def ensure_synthetic_dataset(root: str | PathLike[str] | None = None) -> Path:
    """Generate the default synthetic dataset (DEFAULT_CATEGORIES: texture, object, hard) once (temp folder +
    atomic rename); return its root."""
    root = Path(root) if root is not None else default_synthetic_root()
    if (root / _MARKER).is_file():
        return root
    if root.exists():
        if not root.is_dir() or any(root.iterdir()):
            raise DataError(f"{root} exists but is not a complete synthetic dataset (no {_MARKER}); remove it")
        root.rmdir()

    def build(tmp: Path) -> None:
        make_synthetic_mvtec(tmp, categories=DEFAULT_CATEGORIES)
        (tmp / _MARKER).write_text(json.dumps({"version": SYNTHETIC_VERSION, "seed": 0,
                                               "categories": list(DEFAULT_CATEGORIES)}) + "\n")

    if not atomic_create_dir(root, build) and not (root / _MARKER).is_file():  # lost a race to a non-dataset
        raise DataError(f"{root} exists but is not a complete synthetic dataset (no {_MARKER}); remove it")
    logger.info("synthetic dataset ready at %s", root)
    return root
