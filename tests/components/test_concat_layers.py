"""concat_layers: the one rule that puts several layer maps on one grid (PatchCore, PaDiM, SPADE)."""

from __future__ import annotations

import pytest
import torch

from flawmap.components.features import concat_layers, finest_grid
from flawmap.errors import ConfigError

FINE = torch.arange(8.0).view(1, 1, 2, 4)  # a (1, 1, 2, 4) map, already on the finest grid
COARSE = torch.tensor([[[[1.0, 3.0]]]])  # a (1, 1, 1, 2) map


def test_bilinear_by_hand() -> None:
    # align_corners=False, width 2 -> 4: source x = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
    # (clamped to [0, 1]) -> 1, 1 + 0.25 * 2, 1 + 0.75 * 2, 3; height 1 -> 2 repeats the row
    out = concat_layers([FINE, COARSE], "bilinear")
    assert out.shape == (1, 2, 2, 4)
    assert torch.equal(out[:, 0], FINE[:, 0])  # the finest layer is used as it is, first
    assert torch.equal(out[0, 1], torch.tensor([[1.0, 1.5, 2.5, 3.0], [1.0, 1.5, 2.5, 3.0]]))


def test_nearest_by_hand_and_order() -> None:
    out = concat_layers([COARSE, FINE], "nearest")  # the grid is the finest one, whatever the order
    assert out.shape == (1, 2, 2, 4)
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]]))
    assert torch.equal(out[:, 1], FINE[:, 0])


def test_explicit_size_and_finest_grid() -> None:
    assert finest_grid([COARSE, FINE, torch.zeros(1, 1, 4, 2)]) == (2, 4)  # the first of equal areas
    out = concat_layers([COARSE], "nearest", size=(2, 4))
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]]))


def test_bad_mode() -> None:
    with pytest.raises(ConfigError, match="mode='bicubic'; allowed: bilinear, nearest"):
        concat_layers([FINE], "bicubic")
