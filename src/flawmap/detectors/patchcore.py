"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

fit:     locally aware patch features of all good images -> memory bank M (N*h*w, D)
         -> greedy coreset M_C (a fraction of M, selected on a random projection psi).
predict: per test patch, s = min_{m in M_C} ||p - m||_2 (patch-grid map, upsampled, Gaussian sigma 4);
         image score s* = max over patches, re-weighted with the b nearest neighbours of m* (eq. 7).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..base import BaseDetector, check_choice, check_range
from ..components.anomaly_map import anomaly_map
from ..components.backbones import create_backbone, list_backbones
from ..components.coreset import greedy_coreset
from ..components.features import extract_features
from ..components.knn import knn
from ..errors import ConfigError
from ..registry import register_detector

log = logging.getLogger(__name__)


@register_detector("patchcore")
class PatchCore(BaseDetector):
    """Paper defaults: layer2+layer3 (stride 8+16 stages), p=3, coreset 10%, d*=128, b=9, sigma=4."""

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite2",
        layers: tuple[str, ...] | None = None,  # None: the stride 8 + 16 stages (ResNet layer2+layer3)
        weights: str = "imagenet",
        patch_size: int = 3,  # p: neighbourhood of the local aggregation f_agg
        embedding_dim: int = 1024,  # target dimension of the patch features (adaptive average pooling)
        coreset_ratio: float = 0.1,  # |M_C| / |M| (paper: 0.01, 0.1, 0.25)
        projection_dim: int = 128,  # d* of the Johnson-Lindenstrauss projection used by the coreset
        num_neighbors: int = 9,  # b in the re-weighting of the image score (eq. 7)
        sigma: float = 4.0,  # Gaussian smoothing of the upsampled map
        batch_size: int = 8,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.patch_size = patch_size
        self.embedding_dim = embedding_dim
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.sigma = sigma
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    def _validate_params(self) -> None:
        check_choice("backbone", self.backbone, list_backbones())
        check_range("patch_size", self.patch_size, 1, 15, integer=True)
        if self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be odd (1, 3, 5, ...); got {self.patch_size}")
        check_range("embedding_dim", self.embedding_dim, 1, integer=True)
        check_range("coreset_ratio", self.coreset_ratio, 0.0, 1.0, low_open=True)
        check_range("projection_dim", self.projection_dim, 1, integer=True)
        check_range("num_neighbors", self.num_neighbors, 1, integer=True)
        check_range("sigma", self.sigma, 0.0)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("seed", self.seed, 0, integer=True)

    def _setup(self) -> None:
        self._backbone = create_backbone(self.backbone, self.layers, weights=self.weights, device=self.device)

    # ---- locally aware patch features ---------------------------------------------------------
    def _embed(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """{layer: (B, C_l, h_l, w_l)} -> patch features (B, h, w, D) on the finest grid (h, w)."""
        p = self.patch_size
        first = next(iter(feats.values()))
        size = first.shape[-2:]
        parts = []
        for f in feats.values():
            # f_agg: average over the p x p neighbourhood of each position (stride 1, same size)
            f = F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=False) if p > 1 else f
            parts.append(F.interpolate(f, size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else f)
        x = torch.cat(parts, dim=1).permute(0, 2, 3, 1)  # (B, h, w, sum C_l)
        if x.shape[-1] > self.embedding_dim:  # projection to D by adaptive average pooling over channels
            b, h, w, c = x.shape
            x = F.adaptive_avg_pool1d(x.reshape(-1, 1, c), self.embedding_dim).reshape(b, h, w, -1)
        return x.contiguous()

    def _fit(self, images: torch.Tensor) -> None:
        feats = extract_features(self._backbone, images, batch_size=self.batch_size, desc="patchcore: features")
        emb = self._embed(feats)  # (N, h, w, D)
        del feats
        bank = emb.reshape(-1, emb.shape[-1])  # M (N*h*w, D)
        idx = greedy_coreset(bank.to(self.device_), self.coreset_ratio, projection_dim=self.projection_dim, seed=self.seed)
        self.memory_bank_ = bank[idx].to(self.device_)  # M_C (k, D)
        self.grid_ = list(emb.shape[1:3])
        log.info("patchcore: memory bank %d -> coreset %d patches of dim %d", len(bank), len(idx), bank.shape[1])

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.memory_bank_
        emb = self._embed(extract_features(self._backbone, images, batch_size=len(images), device=self._backbone.device))
        b, h, w, d = emb.shape
        q = emb.reshape(-1, d).to(bank.device)
        dist, nn_idx = knn(q, bank, 1)  # s per patch: (B*h*w, 1)
        patch = dist.view(b, h * w)
        s_star, arg = patch.max(dim=1)  # s* and the index of m_test,* per image
        m_test = q.view(b, h * w, d)[torch.arange(b), arg]  # (B, D)
        m_star = bank[nn_idx.view(b, h * w)[torch.arange(b), arg]]  # (B, D)
        # eq. 7: w = 1 - exp||m_test - m*|| / sum_{m in N_b(m*)} exp||m_test - m||
        k = min(self.num_neighbors, len(bank))
        _, nb = knn(m_star, bank, k)  # N_b(m*) (B, b)
        d_nb = (m_test.unsqueeze(1) - bank[nb]).norm(dim=-1)  # (B, b)
        weight = 1.0 - torch.exp(s_star - torch.logsumexp(d_nb, dim=1))
        scores = weight * s_star
        maps = anomaly_map(patch.view(b, h, w).cpu(), tuple(images.shape[-2:]), self.sigma)
        return scores, maps

    @classmethod
    def tiny_params(cls) -> dict[str, object]:
        return {"backbone": "efficientnet_lite0"}
