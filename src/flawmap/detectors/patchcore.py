"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

fit:     locally aware patch features of all good images -> memory bank M (N*h*w, D), built batch
         by batch (images may stay uint8; no per-layer feature maps of all images are held)
         -> greedy coreset M_C (a fraction of M, selected on a random projection psi).
         Memory of a fit: M (N h w D float32) + psi (N h w d*) + ~40 bytes per patch + the inputs;
         checked against ``max_memory_gb`` (default: 90% of the available memory) before the
         backbone runs, with a message naming what to change.
predict: per test patch, s = min_{m in M_C} ||p - m||_2 (patch-grid map, upsampled, Gaussian sigma 4);
         image score s* = max over patches, re-weighted with the b nearest neighbours of m* (eq. 7).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

from ..base import BaseDetector, check_choice, check_layers, check_range, float_batch
from ..components.anomaly_map import anomaly_map
from ..components.backbones import NORMALIZATIONS, create_backbone, list_backbones
from ..components.coreset import MODES, greedy_coreset
from ..components.features import concat_layers
from ..components.knn import NearestNeighborIndex, knn
from ..device import check_memory_budget
from ..errors import ConfigError
from ..progress import progress
from ..registry import register_detector

log = logging.getLogger(__name__)


@register_detector("patchcore")
class PatchCore(BaseDetector):
    """Paper defaults: layer2+layer3 (stride 8+16 stages), p=3, coreset 10%, d*=128, b=9, sigma=4."""

    streams_uint8 = True

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite2",
        layers: tuple[str, ...] | None = None,  # None: the stride 8 + 16 stages (ResNet layer2+layer3)
        weights: str = "imagenet",
        normalization: str = "weights",  # input mean/std: "weights" (as the checkpoint was trained) or "imagenet"
        patch_size: int = 3,  # p: neighbourhood of the local aggregation f_agg
        embedding_dim: int = 1024,  # target dimension of the patch features (adaptive average pooling)
        coreset_ratio: float = 0.1,  # |M_C| / |M| (paper: 0.01, 0.1, 0.25)
        coreset_mode: str = "exact",  # "exact" greedy (the paper's picks) or "approx" (faster, see coreset.py)
        projection_dim: int = 128,  # d* of the Johnson-Lindenstrauss projection used by the coreset
        num_neighbors: int = 9,  # b in the re-weighting of the image score (eq. 7)
        sigma: float = 4.0,  # Gaussian smoothing of the upsampled map
        batch_size: int = 8,
        max_memory_gb: float | None = None,  # fit memory budget; None: 90% of the available memory
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.normalization = normalization
        self.patch_size = patch_size
        self.embedding_dim = embedding_dim
        self.coreset_ratio = coreset_ratio
        self.coreset_mode = coreset_mode
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.sigma = sigma
        self.batch_size = batch_size
        self.max_memory_gb = max_memory_gb
        self.seed = seed
        self.device = device

    def _validate_params(self) -> None:
        check_choice("backbone", self.backbone, list_backbones())
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_layers(self.layers, "the stride 8 and 16 layers")
        check_range("patch_size", self.patch_size, 1, 15, integer=True)
        if self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be odd (1, 3, 5, ...); got {self.patch_size}")
        check_range("embedding_dim", self.embedding_dim, 1, integer=True)
        check_range("coreset_ratio", self.coreset_ratio, 0.0, 1.0, low_open=True)
        check_choice("coreset_mode", self.coreset_mode, MODES)
        if self.max_memory_gb is not None:
            check_range("max_memory_gb", self.max_memory_gb, 0.0, low_open=True)
        check_range("projection_dim", self.projection_dim, 1, integer=True)
        check_range("num_neighbors", self.num_neighbors, 1, integer=True)
        check_range("sigma", self.sigma, 0.0)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("seed", self.seed, 0, integer=True)

    def _setup(self) -> None:
        self._backbone = create_backbone(self.backbone, self.layers, weights=self.weights,
                                         normalization=self.normalization, device=self.device)

    # ---- locally aware patch features ---------------------------------------------------------
    def _embed(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """{layer: (B, C_l, h_l, w_l)} -> patch features (B, h, w, D) on the finest grid (h, w)."""
        p = self.patch_size
        # f_agg: average over the p x p neighbourhood of each position (stride 1, same size), per layer. Cells
        # outside the map count as zeros, as in the reference code (a zero-padded unfold, then the mean);
        # models saved before this rule average only the cells inside (agg_padding_ "valid")
        zeros = self.agg_padding_ == "zeros"
        agg = [F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=zeros) if p > 1 else f
               for f in feats.values()]
        x = concat_layers(agg, "bilinear").permute(0, 2, 3, 1)  # (B, h, w, sum C_l)
        if x.shape[-1] > self.embedding_dim:  # projection to D by adaptive average pooling over channels
            b, h, w, c = x.shape
            x = F.adaptive_avg_pool1d(x.reshape(-1, 1, c), self.embedding_dim).reshape(b, h, w, -1)
        return x.contiguous()

    def _fit(self, images: torch.Tensor) -> None:
        n, bs = len(images), self.batch_size
        self.agg_padding_ = "zeros"  # f_agg border rule (see _embed), saved with the model
        first = self._embed(self._backbone_features(float_batch(images[:1])))  # (1, h, w, D)
        _, h, w, d = first.shape
        self._check_memory(n, h * w, d)
        bank = torch.empty(n * h * w, d)  # M (N*h*w, D), filled batch by batch
        for s in progress(range(0, n, bs), desc="patchcore: features", total=-(-n // bs), unit="batch"):
            emb = self._embed(self._backbone_features(float_batch(images[s:s + bs]), batch_size=bs))
            bank[s * h * w:(s + len(emb)) * h * w] = emb.reshape(-1, d)
        idx = greedy_coreset(bank.to(self.device_), self.coreset_ratio, projection_dim=self.projection_dim,
                             seed=self.seed, mode=self.coreset_mode)
        self.memory_bank_ = bank[idx].to(self.device_)  # M_C (k, D)
        self.grid_ = [h, w]
        log.info("patchcore: memory bank %d -> coreset %d patches of dim %d", len(bank), len(idx), d)
        self._build_index()

    def _check_memory(self, n: int, patches: int, dim: int) -> None:
        """Refuse, before the backbone runs, a bank that does not fit the memory budget."""
        m = n * patches
        need = m * (4 * dim + 4 * min(dim, self.projection_dim) + 40) + (1 << 26)  # M, psi, indices, temporaries
        check_memory_budget(
            f"patchcore: {n} training images x {patches} patches = {m} patches of dim {dim} (memory bank and "
            f"its coreset projection)", need, self.max_memory_gb,
            "Use fewer training images (--max-train), a lower resolution (--resize/--crop) or a smaller "
            "embedding_dim; a smaller coreset_ratio or coreset_mode='approx' shortens the coreset but not this peak.")
        log.info("patchcore: fit needs ~%.2f GB for %d patches", need / 2**30, m)

    def _build_index(self) -> None:
        """The exact pruned kNN index over M_C (CPU banks; derived from memory_bank_, never saved)."""
        bank = self.memory_bank_
        self._index = NearestNeighborIndex(bank) if bank.device.type == "cpu" and len(bank) >= 4096 else None

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
        super()._load_state(tensors, {"agg_padding_": "valid", **meta})  # model files without it were fitted with "valid"
        self._build_index()

    def _nearest(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k nearest memory-bank patches of q (Q, D): (dists (Q, k), idx (Q, k))."""
        return self._index.search(q, k) if self._index is not None else knn(q, self.memory_bank_, k)

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self._backbone_features(images, device=self.device_)
        return self._score(feats, tuple(images.shape[-2:]), self._nearest)

    def _score(self, feats: dict[str, torch.Tensor], size: tuple[int, int],
               nearest: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features {layer: (B, C_l, h_l, w_l)} -> scores (B,), maps (B, H, W) for images of ``size``.

        ``nearest(q (Q, D), k) -> (dists (Q, k), idx (Q, k))`` searches M_C: the pruned index or the chunked
        ``knn`` in ``_predict``, the dense ``knn.nearest_dense`` in an ONNX export (gathers, no Python loop
        over the batch, so the traced graph takes any batch size).
        """
        bank = self.memory_bank_
        emb = self._embed(feats)
        b, h, w, d = emb.shape
        q = emb.reshape(-1, d).to(bank.device)
        dist, nn_idx = nearest(q, 1)  # s per patch: (B*h*w, 1)
        patch = dist.view(b, h * w)
        s_star, arg = patch.max(dim=1)  # s* and the index of m_test,* per image
        m_test = q.view(b, h * w, d).gather(1, arg.view(-1, 1, 1).expand(-1, 1, d)).squeeze(1)  # (B, D)
        m_star = bank[nn_idx.view(b, h * w).gather(1, arg.view(-1, 1)).squeeze(1)]  # (B, D)
        # eq. 7: w = 1 - exp||m_test - m*|| / sum_{m in N_b(m*)} exp||m_test - m||
        k = min(self.num_neighbors, len(bank))
        _, nb = nearest(m_star, k)  # N_b(m*) (B, b)
        d_nb = (m_test.unsqueeze(1) - bank[nb]).norm(dim=-1)  # (B, b)
        weight = 1.0 - torch.exp(s_star - torch.logsumexp(d_nb, dim=1))
        scores = weight * s_star
        maps = anomaly_map(patch.view(b, h, w).cpu(), size, self.sigma)
        return scores, maps

    @classmethod
    def tiny_params(cls) -> dict[str, object]:
        return {"backbone": "efficientnet_lite0"}
