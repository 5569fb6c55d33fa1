"""A textured-surface development set whose good images come in correlated bursts.

Each physical *tile* (a grey, elongated surface with its own grain, pores and shading) is shot several
times under different lighting (gain, gamma, a directional ramp), with a small shift and, sometimes, a
slight blur: the shots of one tile are near-copies of each other, as on a line that photographs every
part under several lights, or keeps consecutive video frames. The test images are OTHER tiles, so a
figure measured on them is a figure on new parts.

    make_surface_set(root, n_train_tiles=60, shots=6)     # root/<category>/train/good/tileNNN_lightS.png ...

Layout (MVTec-like, grey 1-channel PNGs, tiles of aspect 1:1 to 1:2.5, height x width varies per tile):

* ``train/good/tileNNN_lightS.png``: ``shots`` shots of each of ``n_train_tiles`` tiles (the group of an
  image is its tile number, so ``--group-by "tile(\\d+)"`` recovers the groups and the image-based rule
  can be checked against them);
* ``test/good/tileNNN_lightS.png``: ``test_shots`` shots of each of ``n_test_tiles`` new tiles;
* ``test/{crack,blowhole,fray}/`` and ``ground_truth/<defect>/*_mask.png``: one shot of a new tile with one
  defect each: thin dark cracks, small dark pores with a bright rim (blowholes), and bites out of the tile's
  edge (frays, within the outer 8% of the short side, so a centre crop loses them).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, shift as nd_shift

#: defect kinds of the test set (spread round-robin over the defective test tiles)
SURFACE_DEFECTS = ("crack", "blowhole", "fray")
#: the tile's aspect ratios (height / width), drawn per tile
ASPECTS = (1.0, 1.5, 2.5)
#: lighting between shots of one tile: gain range, gamma range, ramp strength, shift (px), blur probability
GAIN, GAMMA, RAMP, SHIFT, BLUR_P = (0.8, 1.2), (0.8, 1.25), 0.25, 2.0, 0.3


def _tile(rng: np.random.Generator, width: int) -> np.ndarray:
    """One tile's surface (H, W) float64 in [0, 1]: grain at two scales, pores, a low-frequency shading."""
    h = int(round(width * ASPECTS[rng.integers(len(ASPECTS))]))
    base = rng.uniform(0.35, 0.6)
    coarse = gaussian_filter(rng.normal(size=(h, width)), 6.0)
    fine = gaussian_filter(rng.normal(size=(h, width)), 0.8)
    surf = base + 0.12 * coarse / (coarse.std() + 1e-8) + 0.05 * fine / (fine.std() + 1e-8)
    yy, xx = np.mgrid[0:h, 0:width]
    for _ in range(int(rng.integers(4, 12))):  # small, shallow pores: normal for this surface
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, width), rng.uniform(0.8, 1.8)
        surf -= 0.08 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(surf, 0.0, 1.0)


def _shot(rng: np.random.Generator, tile: np.ndarray) -> np.ndarray:
    """The tile under one lighting: gain, gamma, a directional ramp, a small shift, sometimes a slight blur."""
    h, w = tile.shape
    yy, xx = np.mgrid[0:h, 0:w]
    a = rng.uniform(0, 2 * np.pi)
    ramp = 1 + RAMP * ((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)) / max(h, w)
    img = np.clip(tile * ramp * rng.uniform(*GAIN), 0.0, 1.0) ** rng.uniform(*GAMMA)
    img = nd_shift(img, rng.uniform(-SHIFT, SHIFT, size=2), order=1, mode="nearest")
    if rng.random() < BLUR_P:
        img = gaussian_filter(img, rng.uniform(0.4, 0.9))
    return np.clip(img + rng.normal(0, 0.01, size=img.shape), 0.0, 1.0)


def _defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` on a shot (H, W); returns (image, bool mask)."""
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = img.copy()
    if kind == "crack":  # a random walk 1-2 px wide, 15-30% darker
        n = int(rng.integers(25, 60))
        y, x, ang = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0, 2 * np.pi)
        mask = np.zeros((h, w), bool)
        for _ in range(n):
            ang += rng.normal(0, 0.35)
            y, x = y + np.sin(ang), x + np.cos(ang)
            mask |= (yy - y) ** 2 + (xx - x) ** 2 <= rng.uniform(0.5, 1.0) ** 2
        img[mask] *= 1 - rng.uniform(0.15, 0.30)
    elif kind == "blowhole":  # a dark pore 3-6 px across with a bright rim
        cy, cx, r = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w), rng.uniform(1.5, 3.0)
        d = np.hypot(yy - cy, xx - cx)
        mask = d <= r + 1.0
        img[d <= r] *= 0.35
        rim = (d > r) & (d <= r + 1.0)
        img[rim] = np.minimum(1.0, img[rim] * 1.3)
    else:  # fray: a jagged bite out of one edge, within the outer 8% of the short side
        depth = max(2.0, 0.08 * min(h, w))
        side = int(rng.integers(4))
        along, across = (xx, yy) if side in (0, 1) else (yy, xx)
        n_along = w if side in (0, 1) else h
        edge_dist = across if side in (0, 2) else ((h - 1 - yy) if side == 1 else (w - 1 - xx))
        c, half = rng.uniform(0.2 * n_along, 0.8 * n_along), rng.uniform(0.05, 0.12) * n_along
        jag = depth * (0.5 + 0.5 * np.abs(np.sin(along / rng.uniform(1.5, 3.0))))
        mask = (np.abs(along - c) < half) & (edge_dist < jag * (1 - ((along - c) / half) ** 2).clip(0, 1))
        img[mask] = rng.uniform(0.02, 0.1)  # the background shows through
    return np.clip(img, 0.0, 1.0), mask


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8), mode="L").save(path)


def make_surface_set(root: str | PathLike[str], *, category: str = "surface_tiles", n_train_tiles: int = 60,
                     shots: int = 6, n_test_tiles: int = 30, test_shots: int = 2, n_defect_tiles: int = 45,
                     width: int = 160, seed: int = 0) -> Path:
    """Write the set under ``root/category`` (see the module docstring) and return that folder.
    Every image comes from the seeded stream of its tile and shot, so the set is reproducible."""
    out = Path(root) / category
    ss = np.random.SeedSequence(seed)
    tiles = iter(ss.spawn(n_train_tiles + n_test_tiles + n_defect_tiles))
    for t in range(n_train_tiles):
        rng = np.random.default_rng(next(tiles))
        tile = _tile(rng, width)
        for s in range(shots):
            _save(out / "train" / "good" / f"tile{t:03d}_light{s}.png", _shot(rng, tile))
    for t in range(n_train_tiles, n_train_tiles + n_test_tiles):
        rng = np.random.default_rng(next(tiles))
        tile = _tile(rng, width)
        for s in range(test_shots):
            _save(out / "test" / "good" / f"tile{t:03d}_light{s}.png", _shot(rng, tile))
    for i in range(n_defect_tiles):
        t = n_train_tiles + n_test_tiles + i
        rng = np.random.default_rng(next(tiles))
        kind = SURFACE_DEFECTS[i % len(SURFACE_DEFECTS)]
        img, mask = _defect(rng, _shot(rng, _tile(rng, width)), kind)
        _save(out / "test" / kind / f"tile{t:03d}.png", img)
        _save(out / "ground_truth" / kind / f"tile{t:03d}_mask.png", mask.astype(np.float64))
    return out


__all__ = ["SURFACE_DEFECTS", "make_surface_set"]
