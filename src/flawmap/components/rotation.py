"""Image rotations and the patch-grid correspondence they induce (PatchCore rotation coverage and
test-time augmentation).

Convention: angles in degrees, counterclockwise as displayed (x right, y down), about the image
centre; a point at (u, v) from the centre goes to (u', v') = (cos a u + sin a v, -sin a u + cos a v).
Multiples of 90 degrees are exact (``torch.rot90``'s permutation, the canvas turns with the image: (H, W) -> (W, H)
at 90 and 270); other angles keep the canvas (H, W) and resample bilinearly with ``grid_sample``, the
corners that rotate in being filled by reflection (mirrored content, no black wedge with hard edges).
Patches whose grid cell centre falls outside the source image are then dropped by ``cell_map``
(index -1), so the filler never enters a memory bank nor a test-time score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotation_angles(n: int) -> list[float]:
    """The ``n`` extra rotations evenly spaced over the circle: 360 r / (n + 1), r = 1..n (0: none)."""
    return [360.0 * r / (n + 1) for r in range(1, n + 1)]


def _quarter_turns(angle: float) -> int | None:
    q = angle / 90.0
    return int(round(q)) % 4 if abs(q - round(q)) < 1e-9 else None


def rotated_size(size: tuple[int, ...], angle: float) -> tuple[int, int]:
    """Canvas (H', W') of an image of ``size`` (H, W) rotated by ``angle``."""
    return (size[1], size[0]) if _quarter_turns(angle) in (1, 3) else (size[0], size[1])


def rotate_images(x: torch.Tensor, angle: float) -> torch.Tensor:
    """x (B, C, H, W) float -> rotated (B, C, H', W') (see the module docstring for the convention)."""
    k = _quarter_turns(angle)
    if k is not None:  # torch.rot90 as flips and a transpose (ONNX has no rot90)
        return (x, x.flip(-1).transpose(-2, -1), x.flip(-2, -1), x.transpose(-2, -1).flip(-1))[k]
    _, _, h, w = x.shape
    a = math.radians(angle)
    ys = torch.arange(h, dtype=x.dtype, device=x.device) + 0.5 - h / 2  # v' of each output row
    xs = torch.arange(w, dtype=x.dtype, device=x.device) + 0.5 - w / 2  # u' of each output column
    v2, u2 = torch.meshgrid(ys, xs, indexing="ij")
    u = math.cos(a) * u2 - math.sin(a) * v2  # inverse rotation: where each output pixel comes from
    v = math.sin(a) * u2 + math.cos(a) * v2
    grid = torch.stack((2 * u / w, 2 * v / h), dim=-1).unsqueeze(0)  # (1, H, W, 2) in align_corners=False units
    grid = grid.expand(x.shape[0], -1, -1, -1)  # x.shape[0], not len(x): a traced graph keeps a dynamic batch
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def cell_map(src_grid: tuple[int, int], src_size: tuple[int, ...], dst_grid: tuple[int, int], angle: float) -> torch.Tensor:
    """Which cell of the rotated image's patch grid each source cell lands in: (h*w,) long, row-major
    indices into ``dst_grid`` (h', w'), -1 where the source cell centre leaves the rotated canvas.

    ``src_grid`` (h, w) is the patch grid of an image of ``src_size`` (H, W); ``dst_grid`` the grid of
    the same image rotated by ``angle`` (canvas ``rotated_size(src_size, angle)``). Angle 0 on equal
    grids is the identity. The inverse question (which rotated cells hold real content) is
    ``cell_map(dst_grid, rotated_size(src_size, angle), src_grid, -angle) >= 0``.
    """
    (h, w), (hh, ww) = src_grid, src_size
    (h2, w2), (hh2, ww2) = dst_grid, rotated_size(src_size, angle)
    if _quarter_turns(angle) == 0 and (h, w) == (h2, w2):
        return torch.arange(h * w)
    a = math.radians(angle)
    v, u = torch.meshgrid((torch.arange(h, dtype=torch.float64) + 0.5) * hh / h - hh / 2,
                          (torch.arange(w, dtype=torch.float64) + 0.5) * ww / w - ww / 2, indexing="ij")
    u2 = math.cos(a) * u + math.sin(a) * v + ww2 / 2  # forward rotation, in the rotated canvas
    v2 = -math.sin(a) * u + math.cos(a) * v + hh2 / 2
    j, i = torch.floor(u2 * w2 / ww2).long(), torch.floor(v2 * h2 / hh2).long()
    inside = (i >= 0) & (i < h2) & (j >= 0) & (j < w2)
    return torch.where(inside, i * w2 + j, torch.full_like(i, -1)).reshape(-1)


__all__ = ["cell_map", "rotate_images", "rotated_size", "rotation_angles"]
