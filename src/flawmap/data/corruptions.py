"""Image corruptions for robustness studies: pure, seeded functions on batches of test images.

Every corruption has the same signature::

    images, masks = gaussian_noise(images, severity, seed, masks=None, p=1.0)

* ``images``: float (N, 3, H, W) in [0, 1] (not modified; a new tensor is returned, in [0, 1]).
* ``severity``: 1 (mild) .. 5 (strong); the strength per level is in :data:`SEVERITY_TABLE`.
* ``seed``: the result depends only on (name, seed, image index, severity, p), never on global state.
* ``masks``: optional bool (N, H, W) ground truth; geometric corruptions (``misalignment``) move it
  with the image (nearest neighbour), the others return it unchanged.
* ``p``: probability that each image is corrupted (the study used p = 0.3); the draw is seeded.

``corrupt(name, ...)`` dispatches by name; :data:`CORRUPTIONS` lists them.
"""

from __future__ import annotations

import io
import math
import zlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError
from ..filters import gaussian_blur as gaussian_blur_filter

Masks = torch.Tensor | None
Corruption = Callable[..., tuple[torch.Tensor, Masks]]

#: strength per severity 1..5 (units in the comments)
SEVERITY_TABLE: dict[str, tuple] = {
    "gaussian_noise": (0.02, 0.04, 0.08, 0.12, 0.18),  # std of additive noise (image range [0, 1])
    "salt_pepper": (0.005, 0.01, 0.03, 0.06, 0.10),  # fraction of pixels set to 0 or 1
    "gaussian_blur": (0.5, 1.0, 1.5, 2.5, 4.0),  # blur sigma in pixels at 256 px (scaled with the image size)
    "jpeg": (75, 50, 30, 15, 8),  # JPEG quality
    # (|brightness shift|, |contrast change|)
    "brightness_contrast": ((0.05, 0.1), (0.1, 0.2), (0.15, 0.3), (0.2, 0.4), (0.3, 0.5)),
    "misalignment": ((1.0, 0.01), (2.0, 0.02), (4.0, 0.04), (6.0, 0.06), (8.0, 0.08)),  # (|rotation| deg, |shift| / size)
}
GEOMETRIC = frozenset({"misalignment"})


# ---- helpers --------------------------------------------------------------------------------------
def _check(name: str, images: torch.Tensor, severity: int, p: float, masks: Masks) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"{name}: images must be a float tensor (N, 3, H, W) in [0, 1]; got {got}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ConfigError(f"{name}: severity={severity!r} is not allowed; allowed values: 1, 2, 3, 4, 5")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name}: p={p!r} is out of range; allowed: [0, 1]")
    if masks is not None and (masks.ndim != 3 or tuple(masks.shape) != (images.shape[0], *images.shape[2:])):
        raise ConfigError(f"{name}: masks must have shape (N, H, W) = {(images.shape[0], *images.shape[2:])}; "
                          f"got {tuple(masks.shape)}")


def _rng(name: str, seed: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), *extra])


def _chosen(name: str, n: int, seed: int, p: float) -> np.ndarray:
    """Indices of the images that get corrupted (each with probability p, seeded)."""
    if p >= 1.0:
        return np.arange(n)
    return np.flatnonzero(_rng(name, seed, 0xC0FFEE).random(n) < p)


def _apply(name: str, images: torch.Tensor, severity: int, seed: int, masks: Masks, p: float,
           one: Callable[[torch.Tensor, Masks, np.random.Generator, object], tuple[torch.Tensor, Masks]]
           ) -> tuple[torch.Tensor, Masks]:
    _check(name, images, severity, p, masks)
    level = SEVERITY_TABLE[name][int(severity) - 1]
    out = images.detach().float().clone()
    out_masks = None if masks is None else masks.clone()
    for i in _chosen(name, len(images), seed, p):
        rng = _rng(name, seed, int(i), int(severity))
        img, m = one(out[i], None if masks is None else out_masks[i], rng, level)
        out[i] = img.clamp_(0.0, 1.0)
        if out_masks is not None and m is not None:
            out_masks[i] = m
    return out, out_masks


def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


# ---- corruptions ----------------------------------------------------------------------------------
def gaussian_noise(images: torch.Tensor, severity: int, seed: int = 0, masks: Masks = None, *,
                   p: float = 1.0) -> tuple[torch.Tensor, Masks]:
    """Additive white Gaussian noise, independent per pixel and channel."""
    def one(x, m, rng, std):
        return x + std * torch.randn(x.shape, generator=_torch_gen(rng)), m
    return _apply("gaussian_noise", images, severity, seed, masks, p, one)


def salt_pepper(images: torch.Tensor, severity: int, seed: int = 0, masks: Masks = None, *,
                p: float = 1.0) -> tuple[torch.Tensor, Masks]:
    """Impulse noise: a fraction of pixels set to black or white (all channels), half each."""
    def one(x, m, rng, amount):
        g = _torch_gen(rng)
        u = torch.rand(x.shape[1:], generator=g)
        x = x.clone()
        x[:, u < amount / 2] = 0.0
        x[:, (u >= amount / 2) & (u < amount)] = 1.0
        return x, m
    return _apply("salt_pepper", images, severity, seed, masks, p, one)


def gaussian_blur(images: torch.Tensor, severity: int, seed: int = 0, masks: Masks = None, *,
                  p: float = 1.0) -> tuple[torch.Tensor, Masks]:
    """Defocus-like Gaussian blur (separable, reflect padding, radius ceil(3 sigma)); sigma scales with the
    image size."""
    def one(x, m, rng, sigma256):
        sigma = sigma256 * min(x.shape[-2:]) / 256.0
        if sigma < 0.2:
            return x, m
        return gaussian_blur_filter(x, sigma, truncate=3.0), m
    return _apply("gaussian_blur", images, severity, seed, masks, p, one)


def jpeg(images: torch.Tensor, severity: int, seed: int = 0, masks: Masks = None, *,
         p: float = 1.0) -> tuple[torch.Tensor, Masks]:
    """JPEG compression artefacts (PIL encoder, 4:2:0 chroma subsampling)."""
    def one(x, m, rng, quality):
        arr = (x.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        dec = np.array(Image.open(buf).convert("RGB"))
        return torch.from_numpy(dec).permute(2, 0, 1).float().div_(255.0), m
    return _apply("jpeg", images, severity, seed, masks, p, one)


def brightness_contrast(images: torch.Tensor, severity: int, seed: int = 0, masks: Masks = None, *,
                        p: float = 1.0) -> tuple[torch.Tensor, Masks]:
    """Global illumination change: x' = (x - mean) * (1 +- c) + mean +- b (signs drawn per image)."""
    def one(x, m, rng, level):
        b, c = level
        sb, sc = rng.choice((-1.0, 1.0), size=2)
        mean = x.mean()
        return (x - mean) * (1.0 + sc * c) + mean + sb * b, m
    return _apply("brightness_contrast", images, severity, seed, masks, p, one)


def misalignment(images: torch.Tensor, severity: int, seed: int = 0, masks: Masks = None, *,
                 p: float = 1.0) -> tuple[torch.Tensor, Masks]:
    """Small rigid motion: rotation by +-angle about the centre and a shift of fixed length in a random
    direction (reflection padding for the image); the mask moves with it (nearest neighbour)."""
    def one(x, m, rng, level):
        deg, shift = level
        angle = math.radians(float(rng.choice((-1.0, 1.0))) * deg)
        phi = float(rng.uniform(0, 2 * math.pi))
        tx, ty = 2 * shift * math.cos(phi), 2 * shift * math.sin(phi)  # normalised coordinates span 2
        h, w = x.shape[-2:]
        cos, sin = math.cos(angle), math.sin(angle)
        # output -> input sampling grid in normalised coords, aspect ratio taken into account
        theta = torch.tensor([[cos, -sin * h / w, tx], [sin * w / h, cos, ty]], dtype=torch.float32).unsqueeze(0)
        grid = F.affine_grid(theta, [1, 3, h, w], align_corners=False)
        out = F.grid_sample(x.unsqueeze(0), grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
        if m is not None:
            mm = F.grid_sample(m.float()[None, None], grid, mode="nearest", padding_mode="zeros", align_corners=False)
            m = mm[0, 0] > 0.5
        return out, m
    return _apply("misalignment", images, severity, seed, masks, p, one)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "salt_pepper": salt_pepper,
    "gaussian_blur": gaussian_blur,
    "jpeg": jpeg,
    "brightness_contrast": brightness_contrast,
    "misalignment": misalignment,
}


def list_corruptions() -> list[str]:
    return list(CORRUPTIONS)


def check_corruption(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")


def corrupt(name: str, images: torch.Tensor, severity: int, seed: int = 0, masks: Masks = None, *,
            p: float = 1.0) -> tuple[torch.Tensor, Masks]:
    """Apply corruption ``name`` (see :data:`CORRUPTIONS`)."""
    check_corruption(name)
    return CORRUPTIONS[name](images, severity, seed, masks, p=p)


__all__ = ["CORRUPTIONS", "GEOMETRIC", "SEVERITY_TABLE", "check_corruption", "corrupt", "list_corruptions",
           *CORRUPTIONS]
