"""RIAD blocks: disjoint grid masks, inpainting assembly, SSIM / GMS / MSGMS, U-Net shapes."""

from __future__ import annotations

import pytest
import torch

from flawmap.components import inpainting as ip


@pytest.mark.parametrize("cell,size", [(2, (16, 16)), (4, (16, 12)), (5, (16, 16))])
def test_grid_masks_partition_the_image(cell, size):
    g = torch.Generator().manual_seed(0)
    m = ip.grid_masks(4, size, cell, 3, g)
    assert m.shape == (4, 3, *size)
    assert torch.equal(m.sum(1), torch.ones(4, *size))  # disjoint and covering
    cells = m[:, :, ::cell, ::cell]  # one value per cell
    counts = cells.flatten(2).sum(2)
    assert (counts.max(1).values - counts.min(1).values).max() <= 1  # balanced sets
    assert torch.equal(m, m[:, :, ::cell, ::cell].repeat_interleave(cell, 2).repeat_interleave(cell, 3)[..., :size[0], :size[1]])
    assert not torch.equal(m[0], m[1])  # one random partition per image
    assert torch.equal(m, ip.grid_masks(4, size, cell, 3, torch.Generator().manual_seed(0)))


def test_inpaint_never_sees_the_pixel_it_predicts():
    x = torch.rand(2, 3, 8, 8)
    masks = ip.grid_masks(2, (8, 8), 2, 3, torch.Generator().manual_seed(1))

    class Probe(torch.nn.Module):  # returns its input: the assembled output is all zeros
        def forward(self, t):
            return t

    assert torch.equal(ip.inpaint(Probe(), x, masks), torch.zeros_like(x))
    shared = masks[:1, :, :, :].expand(2, -1, -1, -1)
    out = ip.inpaint(lambda t: t + 1, x, masks[0])  # (n, H, W) masks broadcast over the batch
    assert torch.equal(out, ip.inpaint(lambda t: t + 1, x, shared))


def test_similarity_measures():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ip.ssim_map(x, x), torch.ones_like(x), atol=1e-5)
    assert torch.allclose(ip.gms_map(x, x), torch.ones_like(x))
    assert float(ip.msgms_map(x, x).abs().max()) < 1e-6
    y = x.clone()
    y[:, :, 8:16, 8:16] = 0.5  # a flat patch: gradients vanish there
    d = ip.msgms_map(x, y)
    assert d.shape == (2, 32, 32)
    assert d[:, 10:14, 10:14].mean() > 5 * d[:, 24:, 24:].mean()
    assert float(ip.riad_loss(x, x)) < 1e-5 and float(ip.riad_loss(x, y)) > 0.05


def test_mean_filter():
    m = torch.zeros(1, 9, 9)
    m[0, 4, 4] = 9.0
    f = ip.mean_filter(m, 3)
    assert f.shape == m.shape and torch.allclose(f[0, 3:6, 3:6], torch.ones(3, 3)) and float(f.sum()) == 9.0
    assert ip.mean_filter(m, 1) is m


def test_unet_shapes():
    net = ip.UNet(base=4, depth=3)
    assert net(torch.rand(2, 3, 16, 24)).shape == (2, 3, 16, 24)
