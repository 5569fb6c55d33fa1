"""SPADE (Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020).

fit:     per good image, f (C_img,) = global average pool of the last backbone stage, and the feature
         pyramid F (h*w, C) = layers (ResNet layer1..3) upsampled to the finest grid and concatenated.
predict: image level: N_K(y) = the K nearest good images by ||f_y - f_i||; score = mean of those K
         distances (paper K = 50).
         pixel level: the gallery G = all h*w pyramid features of the K images in N_K(y); the score of
         pixel p is the mean distance to its kappa nearest gallery features (paper kappa = 1);
         the map is upsampled and smoothed (Gaussian sigma 4).

The pixel search is exact (the brute-force values up to float rounding) and never materialises the
gallery: ``components.gallery_knn.GalleryIndex`` over the stored pyramids runs over the K neighbour
images in blocks of at most ``chunk_size`` distance entries, keeping a running kappa-smallest per pixel;
on CPUs with native bf16 a bf16 matmul with rigorous error bounds discards all but a few candidates,
which are then checked in fp32 (bottle: 4.8x faster with 2 threads, 8.5x with 1). K larger than the
number of training images is clamped to that number with a warning (the effective value is ``k_``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..base import as_images, batched, float_batch
from ..components.anomaly_map import anomaly_map
from ..components.backbones import layers_at_strides
from ..components.features import concat_layers
from ..components.gallery_knn import GalleryIndex
from ..components.knn import knn
from ..device import check_memory_budget
from ..errors import ConfigError
from ..params import check_range
from ..progress import progress
from ..registry import register_detector
from .backbone import BackboneDetector

log = logging.getLogger(__name__)

#: pixel pyramid: layer1..3 of the paper's ResNet = the stages at strides 4, 8, 16
PAPER_PIXEL_STRIDES = (4, 8, 16)
#: image feature: the last stage (stride 32; ResNet layer4 = the input of the classifier's pooling)
PAPER_IMAGE_STRIDE = 32


@register_detector("spade")
class SPADE(BackboneDetector):
    """Paper defaults: K = 50 nearest images, kappa = 1 nearest gallery feature, layer1..3 pyramid, sigma 4."""

    streams_uint8 = True

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite2",
        layers: tuple[str, ...] | None = None,  # pixel pyramid; None: the stride 4, 8, 16 stages
        image_layer: str | None = None,  # globally pooled for the image kNN; None: the last (stride 32) stage
        weights: str = "imagenet",
        normalization: str = "weights",  # input mean/std: "weights" (as the checkpoint was trained) or "imagenet"
        k: int = 50,  # K nearest normal images (image score and pixel gallery)
        kappa: int = 1,  # nearest gallery features per pixel
        sigma: float = 4.0,  # Gaussian smoothing of the upsampled map
        chunk_size: int = 1 << 24,  # max distance-matrix entries (pixels x gallery rows) per block
        batch_size: int = 8,
        max_memory_gb: float | None = None,  # budget of the stored pyramids; None: 90% of the available memory
        seed: int = 0,  # unused (SPADE is deterministic); kept for the common interface
        device: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.image_layer = image_layer
        self.weights = weights
        self.normalization = normalization
        self.k = k
        self.kappa = kappa
        self.sigma = sigma
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.max_memory_gb = max_memory_gb
        self.seed = seed
        self.device = device

    @classmethod
    def tiny_params(cls) -> dict[str, object]:
        return {"backbone": "efficientnet_lite0"}

    def _validate_params(self) -> None:
        self._check_backbone_params()
        if self.image_layer is not None and not isinstance(self.image_layer, str):
            raise ConfigError(f"image_layer must be None or a layer name; got {self.image_layer!r}")
        check_range("k", self.k, 1, integer=True)
        check_range("kappa", self.kappa, 1, integer=True)
        check_range("sigma", self.sigma, 0.0)
        check_range("chunk_size", self.chunk_size, 1, integer=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        if self.max_memory_gb is not None:
            check_range("max_memory_gb", self.max_memory_gb, 0.0, low_open=True)
        check_range("seed", self.seed, 0, integer=True)

    def _setup(self) -> None:
        pix = tuple(self.layers if self.layers is not None else layers_at_strides(self.backbone, PAPER_PIXEL_STRIDES))
        img = self.image_layer or layers_at_strides(self.backbone, (PAPER_IMAGE_STRIDE,))[0]
        self._pixel_layers, self._image_layer = pix, img
        wanted = pix + ((img,) if img not in pix else ())
        self._backbone = self._create_backbone(wanted)

    # ---- features -------------------------------------------------------------------------------
    def _features(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """{layer: (B, C_l, h_l, w_l)} -> f (B, C_img) pooled image features, F (B, h, w, C) pyramid."""
        f = feats[self._image_layer].mean(dim=(2, 3))  # global average pooling
        pyr = concat_layers([feats[name] for name in self._pixel_layers], "bilinear")  # (B, C, h, w)
        return f, pyr.permute(0, 2, 3, 1)

    def _fit(self, images: torch.Tensor) -> None:
        n = len(images)
        self.k_ = min(self.k, n)
        if self.k_ < self.k:
            log.warning("spade: k=%d exceeds the %d training images; using K=%d", self.k, n, self.k_)
        img_feats, pix_feats = [], None
        for sl in progress(batched(n, self.batch_size), desc="spade: fit", unit="batch"):
            f, pyr = self._features(self._backbone_features(float_batch(images[sl]), batch_size=self.batch_size))
            if pix_feats is None:  # one (N, h*w, C) buffer, filled batch by batch, checked before
                positions, c = pyr.shape[1] * pyr.shape[2], pyr.shape[3]
                check_memory_budget(
                    f"spade: the pyramids of {n} training images ({positions} positions x {c} channels each)",
                    n * positions * c * 4 + GalleryIndex.extra_bytes(n, positions, c, self.device_), self.max_memory_gb,
                    "SPADE keeps every training pyramid (the method's gallery); use fewer training images "
                    "(--max-train), a lower resolution (--resize/--crop) or fewer/shallower pyramid layers.",
                    self.device_)  # F_i live there
                pix_feats = torch.empty(n, pyr.shape[1] * pyr.shape[2], pyr.shape[3], device=self.device_)
                self.grid_ = [int(pyr.shape[1]), int(pyr.shape[2])]
            pix_feats[sl] = pyr.flatten(1, 2).to(self.device_)
            img_feats.append(f)
        assert pix_feats is not None
        if self.kappa > self.k_ * pix_feats.shape[1]:
            raise ConfigError(f"kappa={self.kappa} is out of range; allowed: [1, {self.k_ * pix_feats.shape[1]}] "
                              f"(K={self.k_} images x {pix_feats.shape[1]} positions)")
        self.train_image_features_ = torch.cat(img_feats).to(self.device_)  # f_i (N, C_img)
        self.train_pixel_features_ = pix_feats  # F_i (N, h*w, C)
        self._build_index()

    def add_good(self, images: Any) -> SPADE:
        """Append good images (N, 3, H, W) to the gallery without refitting (their f_i and F_i); K becomes
        min(k, all images), as a fit on all of them would give."""
        self.check_is_fitted()
        x = as_images(images, keep_uint8=True)
        n = len(self.train_image_features_) + len(x)
        img_feats, pix_feats = [], []
        for sl in progress(batched(len(x), self.batch_size), desc="spade: add", unit="batch"):
            f, pyr = self._features(self._backbone_features(float_batch(x[sl]), batch_size=self.batch_size))
            if list(pyr.shape[1:3]) != list(self.grid_):
                raise ConfigError(f"spade: the model's feature grid is {tuple(self.grid_)}; these images give "
                                  f"{tuple(pyr.shape[1:3])}: add images of the training size")
            img_feats.append(f.to(self.device_))
            pix_feats.append(pyr.flatten(1, 2).to(self.device_))  # (B, h*w, C)
        positions, c = self.train_pixel_features_.shape[1:]
        check_memory_budget(f"spade: the pyramids of {n} images ({positions} positions x {c} channels each)",
                            n * positions * c * 4 + GalleryIndex.extra_bytes(n, positions, c, self.device_),
                            self.max_memory_gb, "SPADE keeps every pyramid; add fewer images.", self.device_)
        self.train_image_features_ = torch.cat([self.train_image_features_, *img_feats])  # f_i (N, C_img)
        self.train_pixel_features_ = torch.cat([self.train_pixel_features_, *pix_feats])  # F_i (N, h*w, C)
        self.k_ = min(self.k, n)
        self._build_index()
        return self

    def _build_index(self) -> None:
        """The exact pixel search over F_i (derived from train_pixel_features_, never saved)."""
        self._index = GalleryIndex(self.train_pixel_features_, chunk_elems=self.chunk_size)

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
        super()._load_state(tensors, meta)
        self._build_index()

    def pixel_scores(self, queries: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """queries (Q, C), neighbours (K,) train image indices -> mean distance of each query to its
        kappa nearest features among all positions of those K images (Q,). Exact, chunked."""
        return self._index.search(queries, neighbours, self.kappa).mean(dim=1)

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, pyr = self._features(self._backbone_features(images, device=self.device_))  # (B, C_img), (B, h, w, C)
        bank = self.train_image_features_
        dist, nn_idx = knn(f.to(bank.device), bank, self.k_)  # distances to N_K(y) (B, K)
        scores = dist.mean(dim=1)
        b, h, w, c = pyr.shape
        queries = pyr.reshape(b, h * w, c).to(bank.device).contiguous()  # (B, h*w, C)
        patch = torch.stack([self.pixel_scores(queries[i], nn_idx[i]) for i in range(b)])  # (B, h*w)
        maps = anomaly_map(patch.view(b, h, w).cpu(), tuple(images.shape[-2:]), self.sigma)
        return scores, maps
