"""2D normalizing flow of affine coupling steps on feature maps (FastFlow, Yu et al. 2021).

One step maps x (B, C, h, w) -> y with log|det dy/dx| (B,):

    x = [x_a, x_b]                         channel halves, C_a = C // 2, C_b = C - C_a
    (s~, t) = g(x_a)                        subnet: conv(k) -> ReLU -> conv(k), k = 3 or 1 (alternating)
    s = alpha * tanh(s~ / alpha)            soft clamp |s| < alpha ("clamp" of the paper's coupling)
    y_b = x_b * exp(s) + t                  affine coupling; log det = sum(s)
    y = P([x_a, y_b]) * exp(a) + b          per-channel affine (log det = h w sum(a)), fixed permutation P

The whole flow f = step_K o ... o step_1 is invertible; the NLL of x under a standard normal
base distribution is 0.5 ||f(x)||^2 - log|det J_f(x)| + const.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class _PlaceChannels(torch.autograd.Function):
    """(y_a (B, C_a, h, w), y_b (B, C_b, h, w)) -> y (B, C, h, w) with y[:, pos_a] = y_a, y[:, pos_b] = y_b.

    The permuted concatenation P([y_a, y_b]) written once (``index_copy_`` into one buffer), whose
    backward gathers (``index_select``) instead of the scatter-add of advanced indexing's backward and
    the zero-filled buffers of slicing's. Training only: inference and export use cat + gather.
    """

    @staticmethod
    def forward(ctx: Any, y_a: torch.Tensor, y_b: torch.Tensor, pos_a: torch.Tensor,  # type: ignore[override]
                pos_b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pos_a, pos_b)
        b, _, h, w = y_a.shape
        out = torch.empty((b, y_a.shape[1] + y_b.shape[1], h, w), dtype=y_a.dtype, device=y_a.device,
                          memory_format=_memory_format(y_a))
        return out.index_copy_(1, pos_a, y_a).index_copy_(1, pos_b, y_b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:  # type: ignore[override]
        pos_a, pos_b = ctx.saved_tensors
        return grad.index_select(1, pos_a), grad.index_select(1, pos_b), None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


class CouplingStep(nn.Module):
    """One affine coupling step with a kxk subnet, a per-channel affine and a fixed permutation."""

    def __init__(self, channels: int, hidden: int, kernel: int, clamp: float, perm: torch.Tensor) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling step needs at least 2 channels; got {channels}")
        self.c_a = channels // 2
        self.c_b = channels - self.c_a
        self.clamp = float(clamp)
        pad = kernel // 2
        self.subnet = nn.Sequential(
            nn.Conv2d(self.c_a, hidden, kernel, padding=pad),
            nn.ReLU(inplace=True),  # the conv's output is not needed by its backward
            nn.Conv2d(hidden, 2 * self.c_b, kernel, padding=pad),
        )
        nn.init.zeros_(self.subnet[-1].weight)  # each step starts as the identity map (Glow-style)
        nn.init.zeros_(self.subnet[-1].bias)
        self.log_scale = nn.Parameter(torch.zeros(channels))  # a (C,)
        self.shift = nn.Parameter(torch.zeros(channels))  # b (C,)
        self.register_buffer("perm", perm.clone().long())  # P (C,), saved with the weights
        self.register_buffer("inv_perm", torch.argsort(perm).long())

    def _scale_shift(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # back to x's dtype (float32): under autocast the subnet runs in bf16 / fp16, the coupling and log-det do not
        s_raw, t = self.subnet(x_a).to(x_a.dtype).chunk(2, dim=1)  # (B, C_b, h, w) each
        return self.clamp * torch.tanh(s_raw / self.clamp), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, h, w) -> (y (B, C, h, w), log|det| (B,)).

        Same map as P([x_a, x_b * exp(s) + t]) * exp(a) + b, with the affine applied before the
        permutation (a, b taken in the order P^-1) so that it merges into the coupling:
        y_b' = x_b * exp(s + a_b) + (t * exp(a_b) + b_b), y_a' = x_a * exp(a_a) + b_a: 3 passes over the
        feature map fewer per step, forward and backward.
        """
        x_a, x_b = x.split([self.c_a, self.c_b], dim=1)
        s, t = self._scale_shift(x_a)
        a, b = self.log_scale[self.inv_perm], self.shift[self.inv_perm]  # (C,) in the order of [x_a, x_b]
        a_a, a_b, b_a, b_b = _col(a[: self.c_a]), _col(a[self.c_a:]), _col(b[: self.c_a]), _col(b[self.c_a:])
        y_a = torch.addcmul(b_a, x_a, torch.exp(a_a))  # (B, C_a, h, w)
        y_b = torch.addcmul(torch.addcmul(b_b, t, torch.exp(a_b)), x_b, torch.exp(s + a_b))  # (B, C_b, h, w)
        if torch.is_grad_enabled() and (y_a.requires_grad or y_b.requires_grad) and not torch.jit.is_tracing():
            y = _PlaceChannels.apply(y_a, y_b, self.inv_perm[: self.c_a], self.inv_perm[self.c_a:])
        else:  # inference and ONNX tracing: plain concatenation + gather
            y = torch.cat([y_a, y_b], dim=1)[:, self.perm]
        hw = x.shape[2] * x.shape[3]
        return y, s.flatten(1).sum(1) + hw * self.log_scale.sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y (B, C, h, w) -> x with forward(x)[0] == y."""
        y = (y - _col(self.shift)) * _col(torch.exp(-self.log_scale))
        y = y[:, self.inv_perm]
        x_a, y_b = y[:, : self.c_a], y[:, self.c_a:]
        s, t = self._scale_shift(x_a)
        return torch.cat([x_a, (y_b - t) * torch.exp(-s)], dim=1)


class Flow2d(nn.Module):
    """K coupling steps on one feature scale; subnet kernels alternate 3x3 and 1x1 (paper)."""

    def __init__(self, channels: int, steps: int = 8, hidden_ratio: float = 1.0, clamp: float = 2.0,
                 kernels: Sequence[int] = (3, 1), generator: torch.Generator | None = None) -> None:
        super().__init__()
        hidden = max(1, int(round(hidden_ratio * channels)))
        self.steps = nn.ModuleList(
            CouplingStep(channels, hidden, kernels[i % len(kernels)], clamp,
                         torch.randperm(channels, generator=generator))
            for i in range(steps)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, h, w) -> (z (B, C, h, w), log|det J| (B,))."""
        logdet = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z


def gaussian_nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """-log p(x) + const per sample: 0.5 ||z||^2 - log|det J| over all dims, z (B, ...) -> (B,)."""
    return 0.5 * z.flatten(1).pow(2).sum(1) - logdet
