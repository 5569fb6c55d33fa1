"""The categories of the hard development benchmark ``synthetic-hard`` (``synthetic.EMBEDDED_DATASETS``).

Each renders one image from its own random stream and, for a defective image, paints one defect and returns
its mask. They are written in the MVTec layout by ``synthetic.make_synthetic_mvtec`` (category names start
with the kind, e.g. ``tall_part`` or ``tall_part_b``):

* ``rotated_part``: an asymmetric (chiral) plate with two holes, a notch and a rib, brushed along its
  length, at a uniformly random rotation (full 360 degrees) and a small shift (+-4% of the side). Defects:
  thin low-contrast scratches (1-3 px wide, 10-22% darker or brighter) and small dents (3-7 px, lit from
  one side).
* ``oriented_texture``: brushed, wood-like grain whose dominant angle is uniform over 180 degrees per
  image; grey, stored as three identical channels. Defects: an orientation break (a patch of the same
  texture at an angle 35-90 degrees off, same brightness and contrast) and thin cracks (1-2 px).
* ``gray_part``: an L-shaped bracket with two holes at a random rotation, stored as a 1-channel
  (mode L) PNG. Defects: thin scratches, dents and a missing hole (the hole not drilled).
* ``tall_part``: a bolt (head, shaft, thread, tip) upright in a 1:2 (W x H = size x 2 size) image,
  filling its height. Defects anywhere along the part, and chipped ends (a bite out of the head or the
  tip, within the outer 9% of the height), so a centre crop cuts some of them away.

Masks are the pixels that were changed (scratches, cracks and dents are restricted to the part's surface).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

#: kind -> its defect types (spread round-robin over the defective test images)
HARD_DEFECTS: dict[str, tuple[str, ...]] = {
    "rotated_part": ("scratch", "dent"),
    "oriented_texture": ("orientation", "crack"),
    "gray_part": ("scratch", "dent", "missing_hole"),
    "tall_part": ("scratch", "dent", "chipped_end"),
}
HARD_CATEGORIES: tuple[str, ...] = tuple(HARD_DEFECTS)
#: scratch widths in px (the line is every pixel within width / 2 of the polyline) and relative contrast
SCRATCH_WIDTH = (1.0, 3.0)
SCRATCH_CONTRAST = (0.10, 0.22)
CRACK_WIDTH = (1.0, 2.0)
CRACK_CONTRAST = (0.15, 0.30)
#: dent radius as a fraction of the image width, and its peak relative brightness change
DENT_RADIUS = (0.015, 0.03)
DENT_CONTRAST = (0.25, 0.45)
#: orientation break: patch radius (fraction of the side) and angle off the texture's own (radians)
BREAK_RADIUS = (0.05, 0.09)
BREAK_ANGLE = (np.deg2rad(20), np.deg2rad(45))
BREAK_EDGE = 5.0
#: the range of the parts' random rotation (radians; rotated_part, gray_part) and their shift (fraction of the side)
ROTATION = 2 * np.pi
SHIFT = 0.04

_Image = np.ndarray  # float64 (H, W) grey or (H, W, 3) colour in [0, 1]


class _Scene:
    """A rendered part: image, background, surface mask and the pose (part -> image coordinates)."""

    def __init__(self, img: _Image, bg: _Image, on: np.ndarray, cover: np.ndarray,
                 cy: float, cx: float, theta: float) -> None:
        self.img, self.bg, self.on, self.cover = img, bg, on, cover
        self.cy, self.cx, self.theta = cy, cx, theta

    def to_image(self, u: float, v: float) -> np.ndarray:
        """Part coordinates (along, across) -> image (y, x)."""
        c, s = np.cos(self.theta), np.sin(self.theta)
        return np.array([self.cy + u * s + v * c, self.cx + u * c - v * s])


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.mgrid[0:h, 0:w].astype(np.float64)
    return g[0], g[1]


def _frame(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Image -> part coordinates (u along the part's axis at angle theta, v across)."""
    c, s = np.cos(theta), np.sin(theta)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def _box(u: np.ndarray, v: np.ndarray, cu: float, cv: float, hu: float, hv: float, r: float) -> np.ndarray:
    """Signed distance to a rounded box (negative inside)."""
    qu, qv = np.abs(u - cu) - (hu - r), np.abs(v - cv) - (hv - r)
    return np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0) - r


def _disk(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    return np.hypot(u - cu, v - cv) - r


def _cover(sdf: np.ndarray) -> np.ndarray:
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _brushed(rng: np.random.Generator, v: np.ndarray, extent: float) -> np.ndarray:
    """Unit-variance lines along u: 1-D smoothed noise sampled at the across coordinate v."""
    xs = np.arange(-extent, extent + 1.0)
    table = gaussian_filter1d(rng.normal(size=xs.size), 1.2)
    return np.interp(v, xs, table / (table.std() + 1e-8))


def _fine(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    n = gaussian_filter(rng.normal(size=shape), 0.7)
    return n / (n.std() + 1e-8)


def _light(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, strength: float) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi)
    h, w = yy.shape
    return 1 + strength * ((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)) / max(h, w)


def _colour(cat: np.random.Generator, lo: float, hi: float, sat: float) -> np.ndarray:
    """A category colour: grey level in [lo, hi] tinted by `sat`."""
    return cat.uniform(lo, hi) * (1 + sat * (cat.permutation(np.array([-1.0, 0.0, 1.0]))))


def _compose(bg: np.ndarray, cover: np.ndarray, surface: np.ndarray, colour: np.ndarray | None) -> tuple[_Image, _Image]:
    """Background and surface shade (H, W) -> image; colour None = grey (H, W), else (H, W, 3)."""
    img = bg * (1 - cover) + surface * cover
    if colour is None:
        return img, bg
    return img[..., None] * colour[None, None, :], bg[..., None] * colour[None, None, :]


# ---- parts --------------------------------------------------------------------------------------------
def _plate(rng: np.random.Generator, cat: np.random.Generator, size: int) -> _Scene:
    """rotated_part: a chiral plate (holes, notch and rib off both axes), brushed along its length."""
    colour = _colour(cat, 0.75, 0.85, 0.12)
    yy, xx = _grid(size, size)
    theta = rng.uniform(0, ROTATION)
    cy, cx = size / 2 + rng.uniform(-SHIFT, SHIFT, 2) * size
    u, v = _frame(yy, xx, cy, cx, theta)
    s = size
    sdf = _box(u, v, 0, 0, 0.30 * s, 0.17 * s, 0.05 * s)
    for cu, cv, r in ((0.17 * s, 0.0, 0.055 * s), (-0.16 * s, 0.08 * s, 0.025 * s), (-0.30 * s, -0.06 * s, 0.05 * s)):
        sdf = np.maximum(sdf, -_disk(u, v, cu, cv, r))  # big hole, small hole, notch
    cover = _cover(sdf)
    rib = _cover(np.abs(u + 0.05 * s) - 0.012 * s) * cover
    light = _light(rng, yy, xx, 0.12)
    bevel = 1 - 0.25 * np.clip(1 + sdf / 3, 0, 1) * (sdf < 0)
    surface = (0.62 * (1 - 0.1 * (u / (0.3 * s)) ** 2) * (1 + 0.035 * _brushed(rng, v, s) + 0.012 * _fine(rng, u.shape))
               * light * bevel * (1 - 0.2 * rib) * (1 + rng.normal(0, 0.02)))
    bg = 0.22 * light + 0.006 * rng.normal(size=u.shape)
    img, bgc = _compose(bg, cover, surface, colour)
    return _Scene(img, bgc, cover > 0.99, cover, cy, cx, theta)


_BRACKET_HOLES = ((0.17, -0.06, 0.035), (-0.21, 0.19, 0.025))  # (u, v, radius) / size


def _bracket(rng: np.random.Generator, cat: np.random.Generator, size: int, drill: tuple[bool, bool] = (True, True)
             ) -> _Scene:
    """gray_part: an L-shaped bracket with two holes (``drill``: which ones are there) at a random rotation."""
    yy, xx = _grid(size, size)
    theta = rng.uniform(0, ROTATION)
    cy, cx = size / 2 + rng.uniform(-SHIFT, SHIFT, 2) * size
    u, v = _frame(yy, xx, cy, cx, theta)
    s = size
    sdf = np.minimum(_box(u, v, 0.0, -0.06 * s, 0.28 * s, 0.08 * s, 0.02 * s),
                     _box(u, v, -0.2 * s, 0.07 * s, 0.08 * s, 0.20 * s, 0.02 * s))
    for (hu, hv, r), there in zip(_BRACKET_HOLES, drill):
        if there:
            sdf = np.maximum(sdf, -_disk(u, v, hu * s, hv * s, r * s))
    cover = _cover(sdf)
    light = _light(rng, yy, xx, 0.15)
    bevel = 1 - 0.3 * np.clip(1 + sdf / 2.5, 0, 1) * (sdf < 0)
    level = cat.uniform(0.55, 0.65)
    surface = level * (1 + 0.03 * _brushed(rng, u, s) + 0.015 * _fine(rng, u.shape)) * light * bevel * (1 + rng.normal(0, 0.02))
    bg = 0.18 * light + 0.006 * rng.normal(size=u.shape)
    img, bgc = _compose(bg, cover, surface, None)
    return _Scene(img, bgc, cover > 0.99, cover, cy, cx, theta)


def _bolt(rng: np.random.Generator, cat: np.random.Generator, size: int) -> _Scene:
    """tall_part: a bolt upright in a size x 2 size (W x H) image: head (top), shaft, thread, tip (bottom)."""
    colour = _colour(cat, 0.7, 0.8, 0.06)
    h, w = 2 * size, size
    yy, xx = _grid(h, w)
    theta = np.pi / 2 + rng.normal(0, 0.012)  # u runs down the image
    cy, cx = h / 2 + rng.uniform(-0.012, 0.012) * h, w / 2 + rng.uniform(-0.03, 0.03) * w
    u, v = _frame(yy, xx, cy, cx, theta)
    head = _box(u, v, -0.40 * h, 0, 0.06 * h, 0.34 * w, 0.03 * w)
    thread = (u > 0.0) & (u < 0.36 * h)
    teeth = 0.012 * w * np.sin(2 * np.pi * u / (0.022 * h)) * thread
    shaft = _box(u, v, -0.01 * h, 0, 0.37 * h, 0.15 * w + teeth, 0.01 * w)
    half = 0.15 * w - np.clip((u - 0.36 * h) / (0.10 * h), 0, 1) * 0.11 * w
    tip = np.maximum(np.abs(v) - half, np.maximum(u - 0.46 * h, 0.34 * h - u))
    sdf = np.minimum(np.minimum(head, shaft), tip)
    cover = _cover(sdf)
    in_head = head < 0
    hw = np.where(in_head, 0.34 * w, 0.15 * w)
    cyl = 1 - 0.35 * (v / hw) ** 2 + 0.15 * np.exp(-(((v + 0.3 * hw) / (0.12 * hw)) ** 2))
    ridges = 1 + 0.10 * np.sin(2 * np.pi * u / (0.022 * h) + np.pi / 2) * thread
    light = _light(rng, yy, xx, 0.1)
    surface = (0.6 * cyl * ridges * (1 + 0.02 * _brushed(rng, u, h) + 0.012 * _fine(rng, u.shape)) * light
               * (1 + rng.normal(0, 0.02)))
    bg = 0.2 * light + 0.006 * rng.normal(size=u.shape)
    img, bgc = _compose(bg, cover, surface, colour)
    return _Scene(img, bgc, cover > 0.99, cover, cy, cx, theta)


# ---- defects ------------------------------------------------------------------------------------------
def _polyline(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, center: np.ndarray, length: float,
              width: float, angle: float | None = None, wiggle: float = 0.25, n: int = 3) -> np.ndarray:
    """Pixels within width / 2 of a wiggly polyline of about ``length`` px centred near ``center``."""
    a = rng.uniform(0, np.pi) if angle is None else angle
    step = length / n
    pts = [center - length / 2 * np.array([np.sin(a), np.cos(a)])]
    for _ in range(n):
        a += rng.normal(0, wiggle)
        pts.append(pts[-1] + step * np.array([np.sin(a), np.cos(a)]))
    lo = np.floor(np.min(pts, 0) - width - 1).astype(int)
    hi = np.ceil(np.max(pts, 0) + width + 2).astype(int)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, yy.shape)
    mask = np.zeros(yy.shape, dtype=bool)
    if (hi <= lo).any():
        return mask
    sy, sx = yy[lo[0]:hi[0], lo[1]:hi[1]], xx[lo[0]:hi[0], lo[1]:hi[1]]
    sub = np.zeros(sy.shape, dtype=bool)
    for p, q in zip(pts[:-1], pts[1:]):
        d = q - p
        t = np.clip(((sy - p[0]) * d[0] + (sx - p[1]) * d[1]) / (d @ d), 0, 1)
        sub |= np.hypot(sy - p[0] - t * d[0], sx - p[1] - t * d[1]) <= width / 2
    mask[lo[0]:hi[0], lo[1]:hi[1]] = sub
    return mask


def _shade(img: _Image, mask: np.ndarray, factor: np.ndarray | float) -> None:
    """img[mask] *= factor (per pixel or scalar), clipped to [0, 1]."""
    f = factor[mask] if isinstance(factor, np.ndarray) else factor
    img[mask] = np.clip(img[mask] * (f[:, None] if img.ndim == 3 and isinstance(f, np.ndarray) else f), 0, 1)


def _scratch(rng: np.random.Generator, img: _Image, on: np.ndarray, center: np.ndarray, length: float,
             angle: float | None = None) -> np.ndarray:
    yy, xx = _grid(*on.shape)
    mask = _polyline(rng, yy, xx, center, length, rng.uniform(*SCRATCH_WIDTH), angle) & on
    _shade(img, mask, 1 + rng.uniform(*SCRATCH_CONTRAST) * rng.choice((-1.0, 1.0)))
    return mask


def _dent(rng: np.random.Generator, img: _Image, on: np.ndarray, center: np.ndarray) -> np.ndarray:
    """A small elliptical dent lit from one side: darker on one half, brighter on the other."""
    yy, xx = _grid(*on.shape)
    w = on.shape[1]
    a, b = w * rng.uniform(*DENT_RADIUS, 2)
    th, light = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    dy, dx = yy - center[0], xx - center[1]
    p, q = dy * np.cos(th) + dx * np.sin(th), -dy * np.sin(th) + dx * np.cos(th)
    r2 = (p / a) ** 2 + (q / b) ** 2
    side = (dy * np.sin(light) + dx * np.cos(light)) / max(a, b)
    mask = (r2 < 1) & on
    contrast = rng.uniform(*DENT_CONTRAST)
    _shade(img, mask, 1 + contrast * np.clip(1 - r2, 0, 1) * (0.9 * side - 0.3))
    return mask


def _surface_point(rng: np.random.Generator, scene: _Scene, u_range: tuple[float, float],
                   v_range: tuple[float, float], margin: int = 4) -> np.ndarray:
    """A random point on the part's surface (part coordinates drawn in the ranges), at least ``margin`` px in."""
    h, w = scene.on.shape
    for _ in range(200):
        y, x = scene.to_image(rng.uniform(*u_range), rng.uniform(*v_range))
        iy, ix = int(round(y)), int(round(x))
        if margin <= iy < h - margin and margin <= ix < w - margin and scene.on[iy - margin:iy + margin + 1,
                                                                                 ix - margin:ix + margin + 1].all():
            return np.array([y, x])
    return scene.to_image(0.0, 0.0)


def _part_defect(rng: np.random.Generator, scene: _Scene, defect: str, u_range: tuple[float, float],
                 v_range: tuple[float, float], scratch_len: tuple[float, float], angle: float | None = None) -> np.ndarray:
    center = _surface_point(rng, scene, u_range, v_range)
    if defect == "scratch":
        return _scratch(rng, scene.img, scene.on, center, rng.uniform(*scratch_len), angle)
    return _dent(rng, scene.img, scene.on, center)


def _render_plate(rng: np.random.Generator, cat: np.random.Generator, size: int, defect: str | None
                  ) -> tuple[_Image, np.ndarray | None]:
    scene = _plate(rng, cat, size)
    if defect is None:
        return scene.img, None
    s = size
    return scene.img, _part_defect(rng, scene, defect, (-0.27 * s, 0.27 * s), (-0.15 * s, 0.15 * s), (0.08 * s, 0.2 * s))


def _render_bracket(rng: np.random.Generator, cat: np.random.Generator, size: int, defect: str | None
                    ) -> tuple[_Image, np.ndarray | None]:
    if defect != "missing_hole":
        scene = _bracket(rng, cat, size)
        if defect is None:
            return scene.img, None
        s = size
        u_range, v_range = ((-0.27 * s, 0.27 * s), (-0.13 * s, 0.0)) if rng.random() < 0.6 else \
            ((-0.27 * s, -0.13 * s), (-0.13 * s, 0.26 * s))
        return scene.img, _part_defect(rng, scene, defect, u_range, v_range, (0.06 * s, 0.15 * s))
    missing = int(rng.integers(2))
    scene = _bracket(rng, cat, size, drill=(missing != 0, missing != 1))
    hu, hv, r = _BRACKET_HOLES[missing]
    yy, xx = _grid(size, size)
    u, v = _frame(yy, xx, scene.cy, scene.cx, scene.theta)
    return scene.img, _disk(u, v, hu * size, hv * size, r * size) < 0.5


def _render_bolt(rng: np.random.Generator, cat: np.random.Generator, size: int, defect: str | None
                 ) -> tuple[_Image, np.ndarray | None]:
    scene = _bolt(rng, cat, size)
    if defect is None:
        return scene.img, None
    h, w = 2 * size, size
    if defect != "chipped_end":  # anywhere along the part, head to tip
        return scene.img, _part_defect(rng, scene, defect, (-0.45 * h, 0.44 * h), (-0.12 * w, 0.12 * w),
                                       (0.05 * h, 0.1 * h))
    top = rng.random() < 0.5
    u0, v0 = (-0.46 * h, rng.uniform(-0.3, 0.3) * w) if top else (0.46 * h, rng.uniform(-0.03, 0.03) * w)
    cy, cx = scene.to_image(u0, v0)
    yy, xx = _grid(h, w)
    r = w * rng.uniform(0.035, 0.06)
    mask = (np.hypot(yy - cy, xx - cx) < r) & (scene.cover > 0.02)
    scene.img[mask] = scene.bg[mask]
    return scene.img, mask


# ---- texture ------------------------------------------------------------------------------------------
def _grain(rng: np.random.Generator, cat_period: float, size: int, theta: float) -> np.ndarray:
    """Unit-variance brushed, wood-like grain whose lines run at angle theta (radians, image x axis)."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    f_d, f_n = fx * np.cos(theta) + fy * np.sin(theta), -fx * np.sin(theta) + fy * np.cos(theta)
    spectrum = np.exp(-0.5 * ((f_d / 0.006) ** 2 + (f_n / 0.09) ** 2))
    streaks = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * spectrum))
    streaks /= streaks.std() + 1e-8
    yy, xx = _grid(size, size)
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    warp = gaussian_filter(rng.normal(size=(size, size)), size / 16)
    warp /= warp.std() + 1e-8
    rings = np.sin(2 * np.pi * across / cat_period + 1.2 * warp + rng.uniform(0, 2 * np.pi))
    return 0.7 * streaks + 0.6 * rings + 0.15 * _fine(rng, (size, size))


def _render_texture(rng: np.random.Generator, cat: np.random.Generator, size: int, defect: str | None
                    ) -> tuple[_Image, np.ndarray | None]:
    period, level = size / cat.uniform(14, 18), cat.uniform(0.45, 0.55)
    theta = rng.uniform(0, np.pi)
    gain = 0.11 * (1 + rng.normal(0, 0.05))
    offset = level * (1 + rng.normal(0, 0.02))
    img = offset + gain * _grain(rng, period, size, theta)
    mask = None
    if defect is not None:
        center = rng.uniform(0.2 * size, 0.8 * size, 2)
        yy, xx = _grid(size, size)
        if defect == "orientation":
            off = rng.uniform(*BREAK_ANGLE) * rng.choice((-1.0, 1.0))
            patch = offset + gain * _grain(rng, period, size, theta + off)
            a, b = size * rng.uniform(*BREAK_RADIUS, 2)
            th = rng.uniform(0, np.pi)
            dy, dx = yy - center[0], xx - center[1]
            p, q = dy * np.cos(th) + dx * np.sin(th), -dy * np.sin(th) + dx * np.cos(th)
            alpha = np.clip((1 - np.sqrt((p / a) ** 2 + (q / b) ** 2)) * min(a, b) / BREAK_EDGE, 0, 1)
            mask = alpha > 0
            img = img * (1 - alpha) + patch * alpha  # blended over BREAK_EDGE px at the rim
        else:  # a crack: a thin, jagged darker line at a random angle
            width = rng.uniform(*CRACK_WIDTH)
            mask = _polyline(rng, yy, xx, center, size * rng.uniform(0.1, 0.25), width, wiggle=0.5, n=5)
            img[mask] *= 1 - rng.uniform(*CRACK_CONTRAST)
    grey = np.clip(img, 0, 1)
    return np.repeat(grey[..., None], 3, axis=2), mask  # stored as three identical channels


RENDERERS: dict[str, Callable[[np.random.Generator, np.random.Generator, int, str | None],
                              tuple[_Image, np.ndarray | None]]] = {
    "rotated_part": _render_plate,
    "oriented_texture": _render_texture,
    "gray_part": _render_bracket,
    "tall_part": _render_bolt,
}
