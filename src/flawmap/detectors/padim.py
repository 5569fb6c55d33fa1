"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2020 workshops).

fit:     embedding x_ij = concat(layer1, layer2, layer3) upsampled to the finest grid, restricted to a
         seeded random subset of d channels; per position (i, j) a Gaussian N(mu_ij, Sigma_ij) with
         Sigma_ij = cov + eps I (eps = 0.01), accumulated batch by batch (never all embeddings at once).
predict: M(x_ij) = sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij)) -> map (h, w), upsampled and
         smoothed (Gaussian sigma 4); image score = max of the map.

Layer upsampling is nearest-neighbour: the reference implementation concatenates layers by
repeating each coarse cell over the fine cells it covers, which is nearest upsampling.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ..base import as_images, batched, seeded_generator
from ..components.anomaly_map import anomaly_map
from ..components.backbones import layers_at_strides
from ..components.features import concat_layers, finest_grid
from ..components.gaussian import (
    StreamingGaussian,
    check_memory,
    covariance_from_inverse_cholesky,
    inverse_cholesky_,
    mahalanobis,
)
from ..errors import ConfigError
from ..params import check_range
from ..progress import progress
from ..registry import register_detector
from .backbone import BackboneDetector

log = logging.getLogger(__name__)

#: d per backbone when ``n_features=None``. Paper: R18 100 of 448, WRN50 550 of 1792 channels.
#: Other backbones (EfficientNet-Lite, not in the paper): all channels of the chosen layers (lite0 176,
#: lite2 192): fewer than the 448 the paper reduces for R18; all of them did better than a random 100 on MVTec
#: bottle (docs/results.md, "PaDiM: all channels or a random 100").
DEFAULT_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}
#: layers 1..3 of the paper = the stages at strides 4, 8, 16
PAPER_STRIDES = (4, 8, 16)


@register_detector("padim")
class PaDiM(BackboneDetector):
    """Paper defaults: layers 1..3 (strides 4, 8, 16), random d channels (R18 100, WRN50 550; EfficientNet-Lite:
    all), eps 0.01, sigma 4."""

    exportable = True

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite2",
        layers: tuple[str, ...] | None = None,  # None: the stride 4, 8, 16 stages (ResNet layer1..3)
        weights: str = "imagenet",
        normalization: str = "weights",  # input mean/std: "weights" (as the checkpoint was trained) or "imagenet"
        n_features: int | None = None,  # d, random channel subset; None: DEFAULT_N_FEATURES or all channels
        eps: float = 0.01,  # Sigma = cov + eps I
        sigma: float = 4.0,  # Gaussian smoothing of the upsampled map
        batch_size: int = 8,
        seed: int = 0,  # seeds the random channel subset
        device: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.normalization = normalization
        self.n_features = n_features
        self.eps = eps
        self.sigma = sigma
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    @classmethod
    def tiny_params(cls) -> dict[str, object]:
        return {"backbone": "efficientnet_lite0"}

    def _validate_params(self) -> None:
        self._check_backbone_params()
        if self.n_features is not None:
            check_range("n_features", self.n_features, 1, integer=True)
        check_range("eps", self.eps, 0.0, low_open=True)
        check_range("sigma", self.sigma, 0.0)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("seed", self.seed, 0, integer=True)

    def _setup(self) -> None:
        layers = self.layers if self.layers is not None else layers_at_strides(self.backbone, PAPER_STRIDES)
        self._backbone = self._create_backbone(tuple(layers))

    # ---- embedding ------------------------------------------------------------------------------
    def _choose_channels(self, total: int) -> torch.Tensor:
        """Seeded random subset of d channel indices of the concatenated layers (sorted) (d,)."""
        d = self.n_features
        if d is None:
            d = min(DEFAULT_N_FEATURES.get(self.backbone, total), total)
        elif d > total:
            raise ConfigError(f"n_features={d} is out of range; allowed: [1, {total}] (channels of layers "
                              f"{list(self._backbone.layers)} of {self.backbone})")
        perm = torch.randperm(total, generator=seeded_generator(self.seed))
        return perm[:d].sort().values

    def _embed(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """{layer: (B, C_l, h_l, w_l)} -> x (B, d, h, w): the chosen channels on the finest grid."""
        idx = self.channel_idx_
        parts, offset = [], 0
        for f in feats.values():
            c = f.shape[1]
            sel = idx[(idx >= offset) & (idx < offset + c)] - offset
            offset += c
            if len(sel):
                parts.append(f[:, sel.to(f.device)])  # select before upsampling: the same values, less work
        return concat_layers(parts, "nearest", size=finest_grid(list(feats.values())))

    # ---- fit / predict --------------------------------------------------------------------------
    def _fit(self, images: torch.Tensor) -> None:
        n = len(images)
        if n < 2:
            raise ConfigError(f"PaDiM needs at least 2 training images to estimate covariances; got {n}")
        acc: StreamingGaussian | None = None
        for sl in progress(batched(n, self.batch_size), desc="padim: fit", unit="batch"):
            feats = self._backbone_features(images[sl], batch_size=self.batch_size)
            if acc is None:  # first batch: channel subset, grid and the memory check, before allocating
                self.channel_idx_ = self._choose_channels(sum(f.shape[1] for f in feats.values()))
                emb = self._embed(feats)
                h, w = emb.shape[-2:]
                need = check_memory(h * w, emb.shape[1], self.device_, what="padim")
                log.info("padim: %d positions x d=%d, %.2f GiB of covariances", h * w, emb.shape[1], need / 1024**3)
                acc = StreamingGaussian(h * w, emb.shape[1], self.device_)
                self.grid_ = [int(h), int(w)]
            else:
                emb = self._embed(feats)
            acc.update(emb.flatten(2).permute(2, 0, 1))  # (P, B, d)
        assert acc is not None
        cov = acc.covariance_(self.eps)  # Sigma_ij (P, d, d), in the accumulator's buffer
        self.mean_ = acc.mean  # mu_ij (P, d)
        self.inv_chol_ = inverse_cholesky_(cov)  # L_ij^-1 (P, d, d), Sigma_ij = L L^T; same buffer
        self.channel_idx_ = self.channel_idx_.to(self.device_)
        self.n_images_ = int(acc.n)  # images behind the Gaussians (add_good resumes from it)

    def add_good(self, images: Any) -> PaDiM:
        """Fold more good images (N, 3, H, W) into the fitted Gaussians without refitting: Sigma is recovered
        from L^-1 (float64), the streaming accumulator resumes with the fit's ``n_images_`` and takes the new
        embeddings; the result equals a fit on all images up to float rounding."""
        self.check_is_fitted()
        n = getattr(self, "n_images_", None)
        if not isinstance(n, int) or n < 2:
            raise ConfigError("padim: this model does not record how many images its Gaussians were estimated "
                              "from (fitted by an older flawmap); refit it to add images")
        x = as_images(images)
        acc = StreamingGaussian.resume(n, self.mean_, covariance_from_inverse_cholesky(self.inv_chol_), self.eps)
        for sl in progress(batched(len(x), self.batch_size), desc="padim: add", unit="batch"):
            emb = self._embed(self._backbone_features(x[sl], batch_size=self.batch_size))  # (B, d, h, w)
            if list(emb.shape[-2:]) != list(self.grid_):
                raise ConfigError(f"padim: the model's feature grid is {tuple(self.grid_)}; these images give "
                                  f"{tuple(emb.shape[-2:])}: add images of the training size")
            acc.update(emb.flatten(2).permute(2, 0, 1))  # (P, B, d)
        cov = acc.covariance_(self.eps)
        self.mean_ = acc.mean
        self.inv_chol_ = inverse_cholesky_(cov)
        self.n_images_ = int(acc.n)
        return self

    def traced_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        return self._predict  # traces as is

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self._embed(self._backbone_features(images, device=self.device_))  # (B, d, h, w)
        b, _, h, w = emb.shape
        if [h, w] != list(self.grid_):
            raise ConfigError(f"PaDiM was fitted on a {tuple(self.grid_)} feature grid; these images give {(h, w)}: "
                              "predict on images of the training size")
        x = emb.flatten(2).permute(2, 0, 1).to(self.mean_.device)  # (P, B, d)
        dist = mahalanobis(x, self.mean_, self.inv_chol_)  # M(x_ij) (P, B)
        maps = anomaly_map(dist.T.reshape(b, h, w).cpu(), tuple(images.shape[-2:]), self.sigma)  # (B, H, W)
        return maps.amax(dim=(1, 2)), maps
