"""Corruptions: pure, seeded, in range, severity-monotone; masks follow geometric corruptions only."""

from __future__ import annotations

import pytest
import torch

from flawmap.data.corruptions import CORRUPTIONS, GEOMETRIC, corrupt
from flawmap.errors import ConfigError


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])  # smooth gradient image
    images = (base[None].repeat(6, 1, 1, 1) * 0.8 + 0.1 + 0.05 * torch.rand(6, 3, 48, 48, generator=g)).clamp(0, 1)
    masks = torch.zeros(6, 48, 48, dtype=torch.bool)
    masks[:, 10:20, 30:40] = True
    return images, masks


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_pure_deterministic_in_range(name: str, batch) -> None:
    images, masks = batch
    before = images.clone()
    a, ma = corrupt(name, images, 3, seed=7, masks=masks)
    b, mb = corrupt(name, images, 3, seed=7, masks=masks)
    assert torch.equal(images, before)  # input untouched
    assert torch.equal(a, b) and torch.equal(ma, mb)  # same seed, same result
    assert a.shape == images.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, images)
    c, _ = corrupt(name, images, 3, seed=8, masks=masks)
    if name not in ("gaussian_blur", "jpeg"):  # the random ones depend on the seed
        assert not torch.equal(a, c)
    if name in GEOMETRIC:
        assert ma.dtype == torch.bool and not torch.equal(ma, masks)
    else:
        assert torch.equal(ma, masks)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_increases_change(name: str, batch) -> None:
    images, _ = batch
    diffs = [float((corrupt(name, images, s, seed=1)[0] - images).abs().mean()) for s in (1, 3, 5)]
    assert diffs[0] < diffs[1] < diffs[2], diffs


def test_probability_per_image_is_seeded(batch) -> None:
    images, _ = batch
    x = images.repeat(10, 1, 1, 1)  # 60 images
    out, _ = corrupt("gaussian_noise", x, 2, seed=3, p=0.3)
    changed = (out - x).flatten(1).abs().amax(dim=1) > 0
    assert 5 <= int(changed.sum()) <= 35  # about 30% of 60
    again, _ = corrupt("gaussian_noise", x, 2, seed=3, p=0.3)
    assert torch.equal(out, again)
    # an image's corruption does not depend on the other images of the batch
    first, _ = corrupt("gaussian_noise", x[:5], 2, seed=3, p=1.0)
    full, _ = corrupt("gaussian_noise", x, 2, seed=3, p=1.0)
    assert torch.equal(first, full[:5])


def test_misalignment_moves_mask_with_image() -> None:
    img = torch.zeros(1, 3, 64, 64)
    img[:, :, 20:40, 20:40] = 1.0  # a bright square, its mask
    mask = img[:, 0] > 0.5
    out, m = corrupt("misalignment", img, 5, seed=0, masks=mask)
    moved = out[0, 0] > 0.5
    inter = (moved & m[0]).sum().item()
    union = (moved | m[0]).sum().item()
    assert inter / union > 0.85  # the mask follows the square
    assert not torch.equal(m, mask)


def test_errors_list_allowed_values(batch) -> None:
    images, _ = batch
    with pytest.raises(ConfigError, match="allowed: gaussian_noise"):
        corrupt("fog", images, 1)
    with pytest.raises(ConfigError, match="allowed values: 1, 2, 3, 4, 5"):
        corrupt("jpeg", images, 6)
    with pytest.raises(ConfigError, match=r"allowed: \[0, 1\]"):
        corrupt("jpeg", images, 1, p=1.5)
    with pytest.raises(ConfigError, match="float tensor"):
        corrupt("jpeg", images[0], 1)
