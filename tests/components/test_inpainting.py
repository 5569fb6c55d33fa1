"""RIAD blocks: disjoint grid masks, inpainting assembly, SSIM / GMS / MSGMS, U-Net shapes."""

from __future__ import annotations

import pytest
import torch

from flawmap.components import inpainting as ip, precision as pr


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


# ---- the batched maths against straightforward references (the formulas, one operand at a time) ----
def _ssim_reference(x, y, window=11, sigma=1.5):
    from flawmap.filters import gaussian_blur

    def blur(t):
        return gaussian_blur(t, sigma, radius=window // 2)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = ip.SSIM_C1, ip.SSIM_C2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def _prewitt_reference(x):  # explicit loops over channels, 3x3 Prewitt / 3 with replicate padding
    p = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., :-2, :-2] + p[..., 1:-1, :-2] + p[..., 2:, :-2] - p[..., :-2, 2:] - p[..., 1:-1, 2:] - p[..., 2:, 2:]) / 3
    gy = (p[..., :-2, :-2] + p[..., :-2, 1:-1] + p[..., :-2, 2:] - p[..., 2:, :-2] - p[..., 2:, 1:-1] - p[..., 2:, 2:]) / 3
    return torch.sqrt(gx**2 + gy**2 + 1e-12)


def _msgms_reference(x, y, scales=4):
    import torch.nn.functional as F

    total = torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype)
    for s in range(scales):
        xs = F.avg_pool2d(x, 2**s) if s else x
        ys = F.avg_pool2d(y, 2**s) if s else y
        gx, gy = _prewitt_reference(xs), _prewitt_reference(ys)
        d = (1 - (2 * gx * gy + ip.GMS_C) / (gx**2 + gy**2 + ip.GMS_C)).mean(1, keepdim=True)
        total += F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0] if s else d[:, 0]
    return total / scales


def test_batched_ssim_gms_msgms_equal_the_references():
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    torch.testing.assert_close(ip.ssim_map(x, y), _ssim_reference(x, y), rtol=1e-5, atol=1e-6)
    gx, gy = _prewitt_reference(x), _prewitt_reference(y)
    torch.testing.assert_close(ip.gms_map(x, y), (2 * gx * gy + ip.GMS_C) / (gx**2 + gy**2 + ip.GMS_C))
    torch.testing.assert_close(ip.msgms_map(x, y), _msgms_reference(x, y), rtol=1e-5, atol=1e-6)
    xd, yd = x.double(), y.double()  # float64 in, float64 out: no float32 shortcut inside
    torch.testing.assert_close(ip.msgms_map(xd, yd), _msgms_reference(xd, yd))


def test_grouped_inpainting_equals_one_partition_at_a_time():
    g = torch.Generator().manual_seed(4)
    net = ip.UNet(base=4, depth=2).eval()
    x = torch.rand(3, 3, 16, 16, generator=g)
    parts = torch.stack([ip.grid_masks(1, (16, 16), k, 3, g)[0] for k in (2, 4, 8)])  # (G, n, H, W)
    with torch.no_grad():
        ref = torch.stack([sum(net(x * (1 - m)) * m for m in p) for p in parts], 1)  # (B, G, 3, H, W)
        for chunk in (None, 4, 27):
            torch.testing.assert_close(ip.inpaint(net, x, parts[None], chunk=chunk), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ip.inpaint(net, x, parts[1]), ref[:, 1], rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # U-Net in bf16, assembly in float32
            low = ip.inpaint(net, x, parts[None])
        assert low.dtype == torch.float32 and (low - ref).abs().max() < 0.05


def test_loss_terms_stay_float32_under_autocast():
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    ref = ip.riad_loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ip.riad_loss(x, y.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ip.riad_loss(x, y.bfloat16().float()))  # only the input was rounded
    assert abs(float(low - ref)) < 1e-2


def test_fold_batchnorm_is_the_eval_network():
    g = torch.Generator().manual_seed(5)
    net = ip.UNet(base=4, depth=2)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    net.train()  # left as it was
    x = torch.rand(2, 3, 16, 16, generator=g)
    folded = ip.fold_batchnorm(net)
    assert net.training and not folded.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), rtol=1e-4, atol=1e-5)
    out = folded(x)
    assert out.is_contiguous()  # the standard layout out, whatever the layout inside


def test_unet_layout_is_the_same_function_and_follows_the_device_rule():
    """channels_last or contiguous: the same U-Net output (and gradients); the layout only follows
    channels_last_helps (CUDA / AMX CPUs), and BatchNorm folding keeps it."""
    from flawmap.components.precision import bf16_is_native

    g = torch.Generator().manual_seed(3)
    net = ip.UNet(base=4, depth=2).double()  # float64: float32 gradients differed by 6e-4 rel. now and then (2 threads)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y0 = net(x)
    y0.square().sum().backward()
    grad0 = x.grad.clone()
    x.grad = None
    net.set_layout(True)
    assert net.down[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert ip.fold_batchnorm(net).memory_format == torch.channels_last
    y1 = net(x)
    y1.square().sum().backward()
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, grad0, rtol=1e-4, atol=1e-5)  # float32 sums in another order
    cpu = torch.device("cpu")
    assert pr.channels_last_helps(cpu) == bf16_is_native(cpu)
    assert pr.channels_last_helps(torch.device("cuda"))
