"""RIAD: reconstruction by inpainting (Zavrtanik, Kristan, Skocaj 2021, Pattern Recognition 112).

A U-Net f trained from scratch on good images (resized to ``image_size``) to inpaint: the grid of
k x k cells (k drawn per image from K = ``grid_sizes``) is split at random into n disjoint masks
M_1..M_n; I_r = sum_i f(I * (1 - M_i)) * M_i. Loss (paper): L = L2 + lambda_S L_SSIM + lambda_G
L_MSGMS with lambda_S = lambda_G = 1. At test time, for every k in K, the image is inpainted with
a fixed (seeded) partition; the anomaly map is the MSGMS distance between I and I_r (mean of
1 - GMS over 4 scales), averaged over K and smoothed by a mean filter; image score = max of the map.

Presets live in flawmap.presets (``get_detector("riad", preset="cpu-quick")``, ``flawmap list --presets``);
the defaults are the paper's: 256 px, K = {2, 4, 8, 16}, n = 3, 300 epochs, Adam lr 1e-4, batch 8.
The U-Net width (64 channels at full resolution, 4 poolings) is the standard U-Net's; the paper's
exact widths are not reproduced here. Mean filter 21 px at 256 px.

Speed: the U-Net is the cost (|K| n = 12 forward passes per test image, n = 3 forward + backward
passes per training image). ``precision`` ("auto": flawmap.components.precision.resolve_precision, the
one rule: bfloat16 / float16 on CUDA, float32 on the CPU; "bfloat16" explicitly on a CPU with AMX: about
2.5-3x faster) autocasts the U-Net only, in training and at test time; the assembly of I_r, the losses
and the maps are float32. At test time all |K| partitions go through one batched call with BatchNorm
folded into the convolutions.
"""

from __future__ import annotations

import hashlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..components.anomaly_map import upsample
from ..components.inpainting import UNet, fold_batchnorm, grid_masks, inpaint, mean_filter, msgms_map, riad_loss
from ..components.precision import autocast, channels_last_helps, resolve_precision
from ..components.training import seeded_init
from ..errors import ConfigError
from ..params import check_range
from ..registry import register_detector
from .trained import TrainedDetector

log = logging.getLogger(__name__)

def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@register_detector("riad")
class RIAD(TrainedDetector):
    net_: UNet  # learned: the inpainting U-Net

    def __init__(self, *, image_size: int = 256, grid_sizes: tuple[int, ...] = (2, 4, 8, 16), n_masks: int = 3,
                 base_channels: int = 64, depth: int = 4, ssim_weight: float = 1.0, gms_weight: float = 1.0,
                 smoothing: int = 21, epochs: int = 300, batch_size: int = 8, lr: float = 1e-4,
                 val_fraction: float = 0.0, patience: int = 0, precision: str = "auto",
                 checkpoint_dir: str | None = None, seed: int = 0, device: str = "auto") -> None:
        self.image_size = image_size
        self.grid_sizes = grid_sizes
        self.n_masks = n_masks
        self.base_channels = base_channels
        self.depth = depth
        self.ssim_weight = ssim_weight
        self.gms_weight = gms_weight
        self.smoothing = smoothing
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.patience = patience
        self.precision = precision
        self.checkpoint_dir = checkpoint_dir
        self.seed = seed
        self.device = device

    @classmethod
    def tiny_params(cls) -> dict[str, object]:
        return {"image_size": 64, "grid_sizes": (2, 4, 8), "base_channels": 8, "depth": 3, "epochs": 3,
                "batch_size": 4, "lr": 1e-3, "smoothing": 5}

    # ---- hooks -------------------------------------------------------------------------------
    def _validate_params(self) -> None:
        check_range("depth", self.depth, 1, 6, integer=True)
        check_range("image_size", self.image_size, 2**self.depth, 4096, integer=True)
        if self.image_size % 2**self.depth:
            raise ConfigError(f"image_size={self.image_size} must be a multiple of 2**depth = {2**self.depth}")
        if not isinstance(self.grid_sizes, (list, tuple)) or not self.grid_sizes:
            raise ConfigError(f"grid_sizes must be a non-empty tuple of cell sizes; got {self.grid_sizes!r}")
        for k in self.grid_sizes:
            check_range("grid_sizes[i]", k, 1, self.image_size, integer=True)
        check_range("n_masks", self.n_masks, 2, 16, integer=True)
        check_range("base_channels", self.base_channels, 1, 512, integer=True)
        check_range("ssim_weight", self.ssim_weight, 0, None)
        check_range("gms_weight", self.gms_weight, 0, None)
        check_range("smoothing", self.smoothing, 1, self.image_size, integer=True)
        self._check_train_params()

    def _build_modules(self) -> None:
        # eval mode: BatchNorm uses its running statistics unless the training loop switches it
        self.net_ = seeded_init(self.seed, lambda: UNet(self.base_channels, self.depth)).to(self.device_).eval()
        self.net_.set_layout(channels_last_helps(self.device_))  # same function either way; speed differs by device

    def _train_masks(self, batch: int, g: torch.Generator) -> torch.Tensor:
        """Masks (B, n, S, S): per image a cell size k drawn from K, then a random n-way partition."""
        s = self.image_size
        which = torch.randint(len(self.grid_sizes), (batch,), generator=g)  # index of k per image
        masks = torch.empty(batch, self.n_masks, s, s)
        for i, k in enumerate(self.grid_sizes):
            rows = (which == i).nonzero().flatten()
            if len(rows):
                masks[rows] = grid_masks(len(rows), (s, s), k, self.n_masks, g)
        return masks

    def _test_masks(self, k: int) -> torch.Tensor:
        """The fixed partition (1, n, S, S) used for cell size k at test time (same for every image)."""
        digest = hashlib.sha256(f"riad-test:{self.seed}:{k}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return grid_masks(1, (self.image_size, self.image_size), k, self.n_masks, g)

    def _fit(self, images: torch.Tensor) -> None:
        self._build_modules()
        log.info("riad: %d images at %d px, U-Net with %d parameters", len(images), self.image_size,
                 sum(p.numel() for p in self.net_.parameters()))
        data = torch.cat([_resize(images[i:i + 64], self.image_size) for i in range(0, len(images), 64)])
        def loss_fn(net: nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            # called under the loop's autocast (precision): the U-Net in it, assembly and loss in float32
            masks = self._train_masks(len(x), g).to(x.device)  # (B, n, S, S)
            recon = inpaint(net, x, masks)  # I_r (B, 3, S, S), float32
            return riad_loss(x, recon, self.ssim_weight, self.gms_weight)

        self._train(self.net_, data.to(self.device_), loss_fn, images=images,
                    skip=("epochs", "checkpoint_dir", "smoothing", "precision"))  # precision: hashed by train

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _resize(images, self.image_size).to(self.device_)  # (B, 3, S, S)
        b, s, n_k = x.shape[0], self.image_size, len(self.grid_sizes)
        masks = torch.cat([self._test_masks(k) for k in self.grid_sizes]).to(x.device)  # (|K|, n, S, S)
        with autocast(resolve_precision(self.precision, x.device), x.device):  # the U-Net only
            recon = inpaint(fold_batchnorm(self.net_), x, masks[None], chunk=self.batch_size * self.n_masks)
        # recon: I_r per cell size (B, |K|, 3, S, S), float32
        dist = msgms_map(x.repeat_interleave(n_k, 0), recon.flatten(0, 1))  # (B |K|, S, S)
        maps = mean_filter(dist.view(b, n_k, s, s).mean(1), self.smoothing)  # (B, S, S)
        maps = upsample(maps, tuple(images.shape[-2:]))
        return maps.flatten(1).amax(1), maps
