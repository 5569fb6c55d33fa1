"""Rotations of images and of their patch grids (components/rotation.py): one convention for both."""

from __future__ import annotations

import pytest
import torch

from flawmap.components.rotation import cell_map, rotate_images, rotated_size, rotation_angles


def test_angles_are_evenly_spaced_extra_rotations() -> None:
    assert rotation_angles(0) == []
    assert rotation_angles(3) == [90.0, 180.0, 270.0]
    assert rotation_angles(7)[:2] == [45.0, 90.0] and len(rotation_angles(7)) == 7


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_quarter_turns_are_rot90_and_the_resampled_path_agrees(quarter: int) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    exact = rotate_images(x, 90.0 * quarter)
    torch.testing.assert_close(exact, torch.rot90(x, quarter, dims=(-2, -1)))
    near = rotate_images(x, 90.0 * quarter + 1e-6)  # not a quarter turn: grid_sample, same convention
    torch.testing.assert_close(near, exact, atol=1e-3, rtol=0)
    assert rotate_images(x, 0.0) is x


def test_non_square_canvas_turns_with_quarter_turns_only() -> None:
    x = torch.rand(1, 3, 24, 40)
    assert rotate_images(x, 90).shape[-2:] == (40, 24) == rotated_size((24, 40), 270)
    assert rotate_images(x, 45).shape[-2:] == (24, 40) == rotated_size((24, 40), 45)


@pytest.mark.parametrize("angle", [90.0, 180.0, 270.0])
@pytest.mark.parametrize("grid,size", [((4, 4), (32, 32)), ((3, 5), (24, 40))])
def test_cell_map_of_quarter_turns_is_the_rot90_permutation(angle: float, grid: tuple[int, int], size: tuple[int, int]) -> None:
    h, w = grid
    ids = torch.arange(h * w).view(1, 1, h, w).float()
    turned = rotate_images(ids, angle)[0, 0].reshape(-1).long()  # turned[cell'] = the source cell there
    cm = cell_map(grid, size, rotated_size(grid, angle), angle)
    assert (cm >= 0).all() and torch.equal(turned[cm], torch.arange(h * w))
    assert torch.equal(cell_map(grid, size, grid, 0.0), torch.arange(h * w))


@pytest.mark.parametrize("angle", [30.0, 45.0, 135.0, -60.0])
def test_cell_map_follows_the_pixels_of_rotate_images(angle: float) -> None:
    """A bright spot at a source cell centre lands, after rotate_images, in (within 1 px of) the cell that
    cell_map names (a centre exactly on a cell boundary may round either way)."""
    size, grid, stride = (64, 64), (8, 8), 8
    cm = cell_map(grid, size, grid, angle)
    yy, xx = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    for src in (9, 18, 27, 36, 45, 29, 20):
        i, j = divmod(src, grid[1])
        x = torch.zeros(1, 1, *size)
        x[..., i * stride + 3:i * stride + 5, j * stride + 3:j * stride + 5] = 1.0  # 2x2 spot at the cell centre
        y = rotate_images(x, angle)[0, 0]
        cy, cx = float((y * yy).sum() / y.sum()), float((y * xx).sum() / y.sum())  # where the spot went
        ci, cj = divmod(int(cm[src]), grid[1])
        assert ci * stride - 1 <= cy <= (ci + 1) * stride + 1 and cj * stride - 1 <= cx <= (cj + 1) * stride + 1, \
            (angle, src, (cy, cx), (ci, cj))


def test_corners_that_rotate_in_are_marked_outside() -> None:
    grid, size = (8, 8), (64, 64)
    real = cell_map(grid, size, grid, -45.0).view(8, 8) >= 0  # cells of the 45-degree image with real content
    assert not real[0, 0] and not real[0, 7] and not real[7, 0] and not real[7, 7]
    assert real[3:5, :].all() and real[:, 3:5].all()
    assert 40 < int(real.sum()) < 64
    out = cell_map(grid, size, grid, 45.0)  # source corners leave the rotated canvas
    assert int((out < 0).sum()) == 64 - int(real.sum())
