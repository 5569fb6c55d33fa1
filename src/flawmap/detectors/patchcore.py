"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

fit:     locally aware patch features of all good images -> memory bank M (N*h*w, D), built batch
         by batch (images may stay uint8; no per-layer feature maps of all images are held)
         -> greedy coreset M_C (a fraction of M, selected on a random projection psi).
         Memory of a fit: M (N h w D float32) + psi (N h w d*) + ~40 bytes per patch + M_C + the inputs;
         checked against ``max_memory_gb`` (default: 90% of the available memory) before the
         backbone runs, with a message naming what to change and the coreset's greedy picks.
predict: per test patch, s = min_{m in M_C} ||p - m||_2 (patch-grid map, upsampled, Gaussian sigma 4);
         image score s* = max over patches, re-weighted with the b nearest neighbours of m* (eq. 7).

Beyond the paper (all off by default, paper scores unchanged):
* ``train_rotations=R``: M also holds the patches of every training image rotated by 360 r / (R + 1),
  r = 1..R (components/rotation.py; patches of the corners that rotate in are dropped), so |M| is up
  to (R + 1) N h w and ``coreset_ratio`` applies to that enlarged bank (|M_C| grows R + 1 times too).
* ``test_rotations=R'``: each test image is also scored rotated by 360 r / (R' + 1); every patch's
  distance is mapped back to its cell of the unrotated grid and s = the MINIMUM over the rotations:
  a normal patch needs one orientation that matches M, a defect matches M in none, so the minimum
  removes orientation false alarms and keeps defects (a mean would add the wrong orientations'
  distances to every normal patch). s*, m_test and m* (eq. 7) are taken where the minimum is attained.
* ``coreset_chunk=c``: the bank is built and reduced c training images at a time (components/coreset.py
  ``chunked_coreset``): each chunk M_j (c (R + 1) h w patches) gets its own greedy coreset at
  ``coreset_ratio`` and only its picks are kept, so M is never held whole (memory: one chunk) and a pick
  costs O(|M_j|) instead of O(|M|). The union covers M within the largest per-chunk coverage radius;
  |M_C| is still about ``coreset_ratio`` |M|. 0 (the default) is one greedy over the whole bank, the paper.
* ``backbone=("a", "b", ...)``: an ensemble (components/ensemble.py). ``ensemble="concat"``: each
  backbone's locally aware features (its stride 8 + 16 stages, pooled to at most D) are concatenated per
  patch into one bank, each block scaled to unit total variance over M (fitted ``block_scale_``).
  ``ensemble="scores"`` (the PatchCore paper's ensembles): one PatchCore per backbone, each with its own
  bank; each member's image scores and maps are standardised with the mean / std of its scores and map
  pixels on the TRAINING images (fitted ``member_stats_``, one more pass over them), then averaged.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from ..base import as_images, float_batch
from ..components.anomaly_map import anomaly_map
from ..components.backbones import NORMALIZATIONS, FeatureExtractor, list_backbones
from ..components.coreset import MODES, chunked_coreset
from ..components.ensemble import BackboneEnsemble, block_scales, check_backbones, create_ensemble, member_features
from ..components.features import concat_layers
from ..components.knn import NearestNeighborIndex, knn, nearest_dense
from ..components.rotation import cell_map, rotate_images, rotated_size, rotation_angles
from ..device import check_memory_budget
from ..errors import ConfigError, ModelFileError
from ..params import check_choice, check_layers, check_range
from ..progress import progress
from ..registry import register_detector
from .backbone import BackboneDetector

log = logging.getLogger(__name__)
Nearest = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
Features = Callable[[torch.Tensor], dict[str, torch.Tensor]]
MAX_ROTATIONS = 35  # 10 degree steps
ENSEMBLES = ("concat", "scores")


@register_detector("patchcore")
class PatchCore(BackboneDetector):
    """Paper defaults: layer2+layer3 (stride 8+16 stages), p=3, coreset 10%, d*=128, b=9, sigma=4."""

    streams_uint8 = True
    exportable = True
    _backbone: FeatureExtractor | BackboneEnsemble

    def __init__(
        self,
        *,
        backbone: str | tuple[str, ...] = "efficientnet_lite2",  # a tuple: an ensemble, one concatenated bank
        layers: tuple[str, ...] | None = None,  # None: the stride 8 + 16 stages (ResNet layer2+layer3)
        weights: str = "imagenet",
        ensemble: str = "concat",  # with several backbones: "concat" (one bank) or "scores" (a bank each, scores averaged)
        normalization: str = "weights",  # input mean/std: "weights" (as the checkpoint was trained) or "imagenet"
        patch_size: int = 3,  # p: neighbourhood of the local aggregation f_agg
        embedding_dim: int = 1024,  # target dimension of the patch features (adaptive average pooling)
        coreset_ratio: float = 0.1,  # |M_C| / |M| (paper: 0.01, 0.1, 0.25)
        coreset_mode: str = "exact",  # "exact" greedy (the paper's picks) or "approx" (faster, see coreset.py)
        coreset_chunk: int = 0,  # training images per coreset chunk; 0: one greedy over the whole bank (the paper)
        projection_dim: int = 128,  # d* of the Johnson-Lindenstrauss projection used by the coreset
        num_neighbors: int = 9,  # b in the re-weighting of the image score (eq. 7)
        sigma: float = 4.0,  # Gaussian smoothing of the upsampled map
        train_rotations: int = 0,  # R: the bank also holds each training image rotated by 360 r / (R + 1)
        test_rotations: int = 0,  # R': each test image is also scored at 360 r / (R' + 1); min over rotations
        batch_size: int = 8,
        max_memory_gb: float | None = None,  # fit memory budget; None: 90% of the available memory
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.ensemble = ensemble
        self.normalization = normalization
        self.patch_size = patch_size
        self.embedding_dim = embedding_dim
        self.coreset_ratio = coreset_ratio
        self.coreset_mode = coreset_mode
        self.coreset_chunk = coreset_chunk
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.sigma = sigma
        self.train_rotations = train_rotations
        self.test_rotations = test_rotations
        self.batch_size = batch_size
        self.max_memory_gb = max_memory_gb
        self.seed = seed
        self.device = device

    def _validate_params(self) -> None:
        check_backbones(self.backbone, self.layers, self.weights, list_backbones())
        check_choice("ensemble", self.ensemble, ENSEMBLES)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_layers(self.layers, "the stride 8 and 16 layers")
        check_range("patch_size", self.patch_size, 1, 15, integer=True)
        if self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be odd (1, 3, 5, ...); got {self.patch_size}")
        check_range("embedding_dim", self.embedding_dim, 1, integer=True)
        check_range("coreset_ratio", self.coreset_ratio, 0.0, 1.0, low_open=True)
        check_choice("coreset_mode", self.coreset_mode, MODES)
        check_range("coreset_chunk", self.coreset_chunk, 0, integer=True)
        if self.coreset_chunk and isinstance(self.backbone, (tuple, list)) and self.ensemble == "concat":
            raise ConfigError(f"coreset_chunk={self.coreset_chunk} is not allowed with ensemble='concat' (its block "
                              "scales are fitted on the whole bank); allowed: 0, or ensemble='scores'")
        if self.max_memory_gb is not None:
            check_range("max_memory_gb", self.max_memory_gb, 0.0, low_open=True)
        check_range("projection_dim", self.projection_dim, 1, integer=True)
        check_range("num_neighbors", self.num_neighbors, 1, integer=True)
        check_range("sigma", self.sigma, 0.0)
        check_range("train_rotations", self.train_rotations, 0, MAX_ROTATIONS, integer=True)
        check_range("test_rotations", self.test_rotations, 0, MAX_ROTATIONS, integer=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("seed", self.seed, 0, integer=True)

    @property
    def _separate(self) -> bool:
        """True for the "scores" ensemble: the members are whole PatchCores (``_members``)."""
        return isinstance(self.backbone, (tuple, list)) and self.ensemble == "scores"

    def _setup(self) -> None:
        if self._separate:  # derived from the parameters; their learned state is saved under "members/<i>/"
            self._members = [PatchCore(**{**self.get_params(), "backbone": b, "ensemble": "concat"}) for b in self.backbone]
            for m in self._members:
                m._setup()
        elif isinstance(self.backbone, (tuple, list)):
            self._backbone = create_ensemble(self.backbone, weights=self.weights, normalization=self.normalization,
                                             device=self.device)
        else:
            self._backbone = self._create_backbone(self.layers)

    # ---- locally aware patch features ---------------------------------------------------------
    def _embed_member(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """One backbone's [(B, C_l, h_l, w_l)] -> its patch features (B, D_b, h, w) on its finest grid."""
        p = self.patch_size
        # f_agg: average over the p x p neighbourhood of each position (stride 1, same size), per layer. Cells
        # outside the map count as zeros, as in the reference code (a zero-padded unfold, then the mean);
        # models saved before this rule average only the cells inside (agg_padding_ "valid")
        zeros = self.agg_padding_ == "zeros"
        agg = [F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=zeros) if p > 1 else f for f in feats]
        x = concat_layers(agg, "bilinear")  # (B, sum C_l, h, w)
        if x.shape[1] > self.embedding_dim:  # projection to D by adaptive average pooling over channels
            b, c, h, w = x.shape
            x = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(-1, 1, c), self.embedding_dim)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return x

    def _embed(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """{layer: (B, C_l, h_l, w_l)} -> patch features (B, h, w, D) on the finest grid (h, w). An ensemble:
        the members' blocks (B, D_b, h, w) on the first member's grid, times ``block_scale_`` (K,) once fitted
        (unscaled while the bank is built), concatenated."""
        blocks = [self._embed_member(g) for g in member_features(feats)]
        if len(blocks) > 1 and hasattr(self, "block_scale_"):
            blocks = [blk * s for blk, s in zip(blocks, self.block_scale_.tolist())]
        x = concat_layers(blocks, "bilinear", size=tuple(blocks[0].shape[-2:])) if len(blocks) > 1 else blocks[0]
        return x.permute(0, 2, 3, 1).contiguous()

    def _fit(self, images: torch.Tensor) -> None:
        if self._separate:
            stats = []
            for m in self._members:
                r = m.use_feature_cache(self.feature_cache).fit(images).predict(images)  # training scores and maps
                stats.append([r.scores.mean(), r.scores.std() + 1e-12, r.maps.mean(), r.maps.std() + 1e-12])
            self.member_stats_ = torch.tensor(stats, dtype=torch.float32)  # (K, 4): score mean, std, map mean, std
            return
        n, bs = len(images), self.batch_size
        self.agg_padding_ = "zeros"  # f_agg border rule (see _embed), saved with the model
        size = (int(images.shape[-2]), int(images.shape[-1]))  # (H, W)
        angles = [0.0, *rotation_angles(self.train_rotations)]
        probe = self._backbone_features(float_batch(images[:1]))
        dims = [self._embed_member(g).shape[1] for g in member_features(probe)]  # D_b per backbone
        _, h, w, d = self._embed(probe).shape  # (1, h, w, D)
        chunk = self.coreset_chunk or n  # training images per coreset chunk (0: all of them, the paper)
        self._check_memory(n, h * w, d, len(angles))
        # M_j, one chunk of the bank (chunk*(R+1)*h*w, D), filled batch by batch; the whole M when chunk = n
        buffer = torch.empty(min(chunk, n) * len(angles) * h * w, d)
        batches = progress([(s, min(s + bs, c0 + chunk, n)) for c0 in range(0, n, chunk)
                            for s in range(c0, min(c0 + chunk, n), bs)],
                           desc="patchcore: features", unit="batch")

        def bank_chunks() -> Iterator[torch.Tensor]:
            """M_1, M_2, ... (each (N_j, D)) in ``buffer``; the next one overwrites it once asked for."""
            fill = 0
            for s, e in batches:
                for rows in self._batch_rows(float_batch(images[s:e]), angles, size, (h, w)):
                    buffer[fill:fill + len(rows)] = rows
                    fill += len(rows)
                if e % chunk == 0 or e == n:  # a chunk is complete
                    bank = buffer[:fill]
                    if len(dims) > 1:  # each member's block to unit total variance, in place (whole bank: one chunk)
                        self.block_scale_ = block_scales(bank, dims)
                        for blk, sc in zip(torch.split(bank, dims, dim=1), self.block_scale_.tolist()):
                            blk.mul_(sc)
                    yield bank.to(self.device_)
                    fill = 0

        coreset, total = chunked_coreset(bank_chunks(), self.coreset_ratio, projection_dim=self.projection_dim,
                                         seed=self.seed, mode=self.coreset_mode)  # type: ignore[arg-type]  # checked: MODES
        self.memory_bank_ = coreset.to(self.device_)  # M_C (k, D)
        self.grid_ = [h, w]
        log.info("patchcore: memory bank %d -> coreset %d patches of dim %d", total, len(coreset), d)
        self._build_index()

    def _batch_rows(self, x: torch.Tensor, angles: list[float], size: tuple[int, int],
                    grid: tuple[int, int]) -> Iterator[torch.Tensor]:
        """A batch x (B, 3, H, W) at every orientation -> its patch rows (rows, D) per orientation; only cells
        with real content are kept (of the unrotated grid ``grid``)."""
        for angle in angles:
            emb = self._embed(self._backbone_features(rotate_images(x, angle), batch_size=len(x)))
            b, hr, wr, d = emb.shape
            keep = cell_map((hr, wr), rotated_size(size, angle), grid, -angle) >= 0
            yield emb.reshape(b, hr * wr, d)[:, keep].reshape(-1, d)

    def add_good(self, images: Any) -> PatchCore:
        """Add good images (N, 3, H, W) to M_C without refitting: the greedy coreset goes on from M_C.

        Their patches (all orientations, as at fit) start at their distance to M_C; the farthest is added and
        the distances updated, ``coreset_ratio`` x (new patches) times: exactly the picks a greedy k-centre run
        makes once it has M_C (the same share of new patches a fit keeps, and first those the bank covers
        worst). Distances are exact (no random projection): the new patches are few. M_C is never reordered
        or thinned, so scores of images like the old ones do not rise."""
        self.check_is_fitted()
        if self._separate:
            raise ConfigError("patchcore: adding images to a 'scores' ensemble (one bank per backbone) is not "
                              "supported; refit it, or use ensemble='concat'")
        x = as_images(images, keep_uint8=True)
        size, grid = (int(x.shape[-2]), int(x.shape[-1])), (int(self.grid_[0]), int(self.grid_[1]))
        angles = [0.0, *rotation_angles(self.train_rotations)]
        rows = []
        for s in progress(range(0, len(x), self.batch_size), desc="patchcore: add", unit="batch"):
            batch = float_batch(x[s:s + self.batch_size])  # (B, 3, H, W)
            for r in self._batch_rows(batch, angles, size, grid):
                rows.append(r.to(self.memory_bank_.device))
        new = torch.cat(rows)  # (n_new, D)
        if new.shape[1] != self.memory_bank_.shape[1]:
            raise ConfigError(f"patchcore: new patches have dimension {new.shape[1]}, the bank "
                              f"{self.memory_bank_.shape[1]}")
        k = max(1, int(round(self.coreset_ratio * len(new))))
        dist = self._nearest(new, 1)[0][:, 0].clone()  # distance of each new patch to M_C (n_new,)
        picks = []
        for _ in range(min(k, len(new))):
            i = int(dist.argmax())
            if not dist[i] > 0:  # every new patch is already in the bank
                break
            picks.append(i)
            dist = torch.minimum(dist, (new - new[i]).norm(dim=1))
        self.memory_bank_ = torch.cat([self.memory_bank_, new[picks]])  # M_C (k_old + k_new, D)
        self._build_index()
        log.info("patchcore: added %d of %d new patches to the memory bank (now %d)", len(picks), len(new),
                 len(self.memory_bank_))
        return self

    def _check_memory(self, n: int, patches: int, dim: int, copies: int = 1) -> None:
        """Refuse, before the backbone runs, a fit that does not fit the memory budget, naming its cost: the bank
        M (n x copies x patches), the part of it held at once (one chunk M_j: ``coreset_chunk`` images, all n when
        0) with its projection psi, the coreset picks kept (M_C) and the greedy's picks per chunk."""
        m = n * copies * patches  # |M| (an upper bound: rotations drop the corners)
        chunk = min(self.coreset_chunk or n, n)
        held = chunk * copies * patches  # |M_j| held at once
        picks = max(1, min(held, round(self.coreset_ratio * held)))  # k_j, greedy picks per chunk
        chunks = -(-n // chunk)
        kept = picks * chunks  # |M_C|
        # M_j and psi(M_j) with the greedy's ~40 bytes per patch, M_C (k x D) and the temporaries
        need = held * (4 * dim + 4 * min(dim, self.projection_dim) + 40) + kept * 4 * dim + (1 << 26)
        rot = f" x {copies} orientations (train_rotations)" if copies > 1 else ""
        part = (f"; held {held} patches at once ({chunk} images a chunk, coreset_chunk), {chunks} chunks"
                if chunks > 1 else "")
        cost = (f"{n} training images{rot} x {patches} patches = {m} patches of dim {dim}{part}; coreset: {kept} "
                f"greedy picks ({picks} per {'chunk' if chunks > 1 else 'bank'} of {held})")
        check_memory_budget(
            f"patchcore: {cost} (memory bank and its coreset projection)", need, self.max_memory_gb,
            "Use fewer training images (--max-train), a lower resolution (--resize/--crop), a smaller embedding_dim "
            "or coreset_chunk (training images per coreset chunk: the bank is never held whole); a smaller "
            "coreset_ratio or coreset_mode='approx' shortens the coreset but not this peak.")
        log.info("patchcore: fit needs ~%.2f GB: %s", need / 2**30, cost)

    def _build_index(self) -> None:
        """The exact pruned kNN index over M_C (CPU banks; derived from memory_bank_, never saved)."""
        bank = self.memory_bank_
        self._index = NearestNeighborIndex(bank) if bank.device.type == "cpu" and len(bank) >= 4096 else None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        own = super().state_tensors()
        members = getattr(self, "_members", []) if self._separate else []
        return {**own, **{f"members/{i}/{k}": t for i, m in enumerate(members) for k, t in m.state_tensors().items()}}

    def state_meta(self) -> dict[str, object]:
        own = super().state_meta()
        return {**own, "members_": [m.state_meta() for m in self._members]} if self._separate else own

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
        if self._separate:
            members_meta = meta.pop("members_", None)
            if not isinstance(members_meta, list) or len(members_meta) != len(self._members):
                raise ModelFileError(f"a scores ensemble of {len(self._members)} backbones needs state 'members_' "
                                     f"with one entry each; got {members_meta!r}")
            for i, (m, mm) in enumerate(zip(self._members, members_meta)):
                prefix = f"members/{i}/"
                m._load_state({k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}, dict(mm))
                m.fitted_ = True
            super()._load_state({k: t for k, t in tensors.items() if not k.startswith("members/")}, meta)
            return
        super()._load_state(tensors, {"agg_padding_": "valid", **meta})  # model files without it were fitted with "valid"
        self._build_index()

    def _nearest(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k nearest memory-bank patches of q (Q, D): (dists (Q, k), idx (Q, k))."""
        return self._index.search(q, k) if self._index is not None else knn(q, self.memory_bank_, k)

    def traced_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``_score`` with the dense, loop-free ``knn.nearest_dense`` search (the pruned index of ``_predict``
        is NumPy code); one bank only."""
        if self._separate:
            raise ConfigError("a PatchCore ensemble='scores' (one bank per backbone) cannot be exported to ONNX; "
                              "refit with ensemble='concat' (one bank) to export it")
        bank = self.memory_bank_.detach().cpu()
        bank_sq = bank.pow(2).sum(1)
        nearest = lambda q, k: nearest_dense(q, bank, k, bank_sq)  # noqa: E731
        return lambda x: self._score(x, nearest, self._backbone)

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._separate:  # mean of the members' standardised scores and maps
            outs = [m.use_feature_cache(self.feature_cache)._predict(images) for m in self._members]
            st = self.member_stats_.tolist()
            return (torch.stack([(o[0].cpu() - a) / b for o, (a, b, _, _) in zip(outs, st)]).mean(0),
                    torch.stack([(o[1].cpu() - c) / d for o, (_, _, c, d) in zip(outs, st)]).mean(0))
        return self._score(images, self._nearest, lambda x: self._backbone_features(x, device=self.device_))

    def _score(self, images: torch.Tensor, nearest: Nearest, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) -> scores (B,), maps (B, H, W); ``features(x)`` -> {layer: (B, C_l, h_l, w_l)}.

        ``nearest(q (Q, D), k) -> (dists (Q, k), idx (Q, k))`` searches M_C: the pruned index or the chunked
        ``knn`` in ``_predict``, the dense ``knn.nearest_dense`` in an ONNX export (gathers, no Python loop
        over the batch, so the traced graph takes any batch size).
        """
        bank, size = self.memory_bank_, tuple(images.shape[-2:])
        qs, dists, nns, cells, offset = [], [], [], [], 0
        for r, angle in enumerate([0.0, *rotation_angles(self.test_rotations)]):
            emb = self._embed(features(rotate_images(images, angle)))  # (B, h_r, w_r, D)
            b, hr, wr, d = emb.shape
            if r == 0:
                h, w = hr, wr  # the unrotated grid
            q = emb.reshape(-1, d).to(bank.device)
            dist, nn_idx = nearest(q, 1)  # s per patch: (B*h_r*w_r, 1)
            cm = cell_map((h, w), size, (hr, wr), angle)  # unrotated cell -> its cell in this rotation (-1: none)
            qs.append(q.view(b, hr * wr, d))
            dists.append(dist.view(b, hr * wr))
            nns.append(nn_idx.view(b, hr * wr))
            cells.append(torch.where(cm >= 0, cm + offset, -1))
            offset += hr * wr
        q, dist, nn_idx, idx = torch.cat(qs, 1), torch.cat(dists, 1), torch.cat(nns, 1), torch.stack(cells)  # idx (R'+1, h*w)
        if bool((idx < 0).any()):  # cells a rotation does not see point at a column of +inf
            dist, idx = F.pad(dist, (0, 1), value=float("inf")), torch.where(idx >= 0, idx, offset)
        patch, r_star = dist[:, idx].min(dim=1)  # s per unrotated patch (B, h*w): the best orientation
        cell = idx.gather(0, r_star)  # (B, h*w): the cell where it was attained
        s_star, arg = patch.max(dim=1)  # s* and the index of m_test,* per image
        at = cell.gather(1, arg.view(-1, 1))  # (B, 1)
        m_test = q.gather(1, at.view(-1, 1, 1).expand(-1, 1, d)).squeeze(1)  # (B, D)
        m_star = bank[nn_idx.gather(1, at).squeeze(1)]  # (B, D)
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
