"""Building blocks of RIAD (Zavrtanik et al. 2021): U-Net, grid masks, SSIM and MSGMS.

* Grid masks: the image is cut into k x k cells; the cells are split at random into n disjoint sets
  of (nearly) equal size S_1..S_n; mask M_i is 1 on the cells of S_i. sum_i M_i = 1.
* Inpainting: I_r = sum_i f(I * (1 - M_i)) * M_i, so every pixel is predicted from an input in
  which its own cell was removed.
* GMS (gradient magnitude similarity, Xue et al. 2014): Prewitt gradient magnitudes g, g_r and
  GMS = (2 g g_r + c) / (g^2 + g_r^2 + c) with c = 0.0026 (= 170 / 255^2, images in [0, 1]).
  MSGMS averages 1 - GMS over 4 scales (image, 1/2, 1/4, 1/8; average pooling).
* SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2.

Speed (benchmarks/bench_trained.py, 1 thread): nearly all the time is the U-Net's own convolutions
(|K| n forward passes per test image), so the levers are the memory layout and the arithmetic precision,
not the loss. The layout is ``precision.channels_last_helps``: channels_last is faster on CPUs with AMX but
slower on CPUs without it, so it is used on CUDA and AMX CPUs only (docs/results.md, "RIAD"). bfloat16
autocast where native (AMX / tensor cores); at test time BatchNorm is folded into the convolutions. SSIM and
MSGMS blur / differentiate all their
operands in one call (the blur is a banded matrix product, flawmap.filters). Under autocast only the
U-Net runs in the lower precision: the assembly of I_r and the loss terms are float32.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..filters import gaussian_blur
from .precision import Layout

GMS_C = 0.0026
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


# ---- U-Net -------------------------------------------------------------------------------------
def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNet(Layout, nn.Module):
    """Encoder-decoder with skip connections (Ronneberger et al. 2015) predicting an RGB image.

    Level i has ``base * 2**i`` channels, i = 0..depth; input sides must be multiples of 2**depth.
    x (B, 3, H, W) -> (B, 3, H, W).
    """

    def __init__(self, base: int = 64, depth: int = 4, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])] +
                                  [_double_conv(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layout(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up, merge in zip(self.up, self.merge):
            x = up(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
            x = merge(torch.cat([skips.pop(), x], dim=1))
        return self.head(x).contiguous()  # 3 channels: back to the standard layout


def fold_batchnorm(net: UNet) -> UNet:
    """An eval-mode copy of ``net`` with every BatchNorm folded into the convolution before it
    (w' = w gamma / sqrt(var + eps), b' = beta - mean gamma / sqrt(var + eps)): the same function as
    ``net.eval()``, one pass over each activation less. ``net`` is left untouched."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(net).eval()
    for block in [*out.down, *out.merge]:
        for i in (0, 3):  # Conv, BN, ReLU, Conv, BN, ReLU
            block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
            block[i + 1] = nn.Identity()
    return out.to(memory_format=out.memory_format)


# ---- masks and inpainting ----------------------------------------------------------------------
def grid_masks(batch: int, size: tuple[int, int], cell: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Random disjoint grid masks (batch, n, H, W) in {0, 1}; one partition per image, sum over n == 1.

    The ceil(H/cell) x ceil(W/cell) cells are shuffled and dealt into n sets of equal size (+-1).
    """
    h, w = size
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    n_cells = gh * gw
    order = torch.rand(batch, n_cells, generator=generator).argsort(dim=1)  # cell ranks per image
    owner = torch.empty_like(order)
    owner.scatter_(1, order, (torch.arange(n_cells) * n // n_cells).expand(batch, -1))  # set index of each cell
    owner = owner.view(batch, 1, gh, gw)
    masks = (owner == torch.arange(n).view(1, n, 1, 1)).float()  # (B, n, gh, gw)
    masks = masks.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)
    return masks[:, :, :h, :w]


def inpaint(net: nn.Module, x: torch.Tensor, masks: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """I_r = sum_i f(I * (1 - M_i)) * M_i for one partition or G partitions at once.

    x (B, 3, H, W); masks (n, H, W) or (B|1, n, H, W) -> I_r (B, 3, H, W); masks (B|1, G, n, H, W)
    (G partitions, e.g. one per cell size k) -> (B, G, 3, H, W). The B G n masked copies go through
    ``net`` in batches of ``chunk`` (None: one batch). Under autocast (the caller's) the network runs in
    the lower precision; its output is cast back and assembled in float32.
    """
    grouped = masks.dim() == 5
    m = masks if grouped else masks.reshape(-1, 1, *masks.shape[-3:])  # (B|1, G, n, H, W)
    b, (g, n) = x.shape[0], m.shape[1:3]
    m = m.to(x).expand(b, g, n, *x.shape[-2:]).unsqueeze(3)  # (B, G, n, 1, H, W)
    inputs = (x[:, None, None] * (1 - m)).flatten(0, 2)  # (B G n, 3, H, W)
    step = chunk or len(inputs)
    out = torch.cat([net(inputs[i:i + step]) for i in range(0, len(inputs), step)])
    out = (out.float().view(b, g, n, *x.shape[1:]) * m).sum(2)  # (B, G, 3, H, W)
    return out if grouped else out[:, 0]


# ---- similarity measures -----------------------------------------------------------------------
def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per pixel and channel, x, y (B, C, H, W) in [0, 1] -> (B, C, H, W): local statistics under an
    odd ``window`` x ``window`` Gaussian (separable, reflect padding; flawmap.filters.gaussian_blur)."""
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"ssim_map: window must be an odd integer >= 1 (e.g. 11); got {window}")

    def blur(t: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(t, sigma, radius=window // 2)

    mu_x, mu_y, e_xx, e_yy, e_xy = blur(torch.stack([x, y, x * x, y * y, x * y])).unbind(0)  # one blur call
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))


def _prewitt_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude per channel (kernels / 3), x (B, C, H, W) -> (B, C, H, W)."""
    c = x.shape[1]
    kx = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=x.device, dtype=x.dtype) / 3.0
    k = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c).view(x.shape[0], c, 2, *x.shape[-2:])
    return torch.sqrt(g.pow(2).sum(2) + 1e-12)


def _gms(g_x: torch.Tensor, g_y: torch.Tensor) -> torch.Tensor:
    return (2 * g_x * g_y + GMS_C) / (g_x.pow(2) + g_y.pow(2) + GMS_C)


def gms_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """GMS similarity (B, C, H, W) in (0, 1]."""
    return _gms(*_prewitt_magnitude(torch.cat([x, y])).chunk(2))  # both operands in one call


def msgms_map(x: torch.Tensor, y: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale GMS distance (B, H, W): mean over scales of 1 - GMS (channel mean), upsampled."""
    size = x.shape[-2:]
    xy = torch.cat([x, y])  # (2B, C, H, W): pooled and differentiated together
    total = x.new_zeros(x.shape[0], *size)
    for s in range(scales):
        if s:
            xy = F.avg_pool2d(xy, 2)
        d = (1 - _gms(*_prewitt_magnitude(xy).chunk(2))).mean(1, keepdim=True)  # (B, 1, H/2^s, W/2^s)
        total += F.interpolate(d, size=size, mode="bilinear", align_corners=False)[:, 0] if s else d[:, 0]
    return total / scales


def riad_loss(x: torch.Tensor, recon: torch.Tensor, ssim_weight: float = 1.0, gms_weight: float = 1.0) -> torch.Tensor:
    """L = L2(I, I_r) + lambda_S (1 - mean SSIM) + lambda_G mean MSGMS (paper: lambda_S = lambda_G = 1),
    always in float32 (autocast off: the blur and Prewitt products would otherwise run in bf16 / fp16)."""
    with torch.autocast(x.device.type, enabled=False):
        x, recon = x.float(), recon.float()
        l2 = F.mse_loss(recon, x)
        return l2 + ssim_weight * (1 - ssim_map(x, recon).mean()) + gms_weight * msgms_map(x, recon).mean()


def mean_filter(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Box filter of maps (B, H, W) with a size x size window (replicate padding); size <= 1: no-op."""
    if size <= 1:
        return maps
    left = (size - 1) // 2
    x = F.pad(maps.unsqueeze(1), (left, size - 1 - left, left, size - 1 - left), mode="replicate")
    return F.avg_pool2d(x, size, stride=1)[:, 0]

