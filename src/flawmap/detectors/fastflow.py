"""FastFlow (Yu et al. 2021, arXiv:2111.07677): a 2D normalizing flow per feature scale.

Features of a frozen ImageNet CNN at strides 4, 8, 16 (the first three stages of the paper's
ResNets) are layer-normalised over (C, h, w) with a learned elementwise affine, then mapped by a
flow f_l of K affine coupling steps (subnets alternate 3x3 and 1x1 convolutions) to z_l ~ N(0, I).
Training minimises sum_l [0.5 ||z_l||^2 - log|det J_l|] (mean over the batch) with Adam.
Anomaly map (paper): per scale p_l = exp(-0.5 mean_c z_l^2) (h_l, w_l), upsampled to the image and
averaged over scales; map = -mean_l p_l ("prob"), or mean_l 0.5 mean_c z_l^2 ("nll"). Score = max.

Early stopping (``val_fraction`` > 0, ``patience`` > 0; the ``fast`` preset): the held-out NLL of a flow on
backbone features keeps falling long after the detector has stopped changing (the features lie near a
lower-dimensional set, so the density can sharpen for ever; on bottle -1% per epoch through epoch 110), so
the default rule ``stop_on="maps"`` watches the anomaly maps of the held-out TRAINING images instead: stop
when their pixel ranking changed by at most ``map_tolerance`` (1 - Spearman's rho) over the last
``patience`` epochs (flawmap.components.training). ``stop_on="loss"`` is the classic rule (``min_delta``).

Defaults (paper, Sec. 4): K = 8 steps, Adam lr 1e-3, weight decay 1e-5, batch 32, 500 epochs,
hidden ratio 1.0 (ResNet18) / 0.16 (WideResNet50-2). The paper does not cover EfficientNet-Lite:
its stages are as narrow as ResNet18's (24/48/120 channels for lite2), so it gets 1.0 too. The
coupling clamp (2.0) is not given in the paper. Speed: the backbone is frozen and training images
are not augmented, so their normalised features are computed once and cached in memory
(``cache_features``); an epoch then costs only the flows.

Epoch times, the comparison with anomalib and where the ``fast`` preset stops are measured on the results page
of the documentation (docs/results.md, "FastFlow").
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..components.anomaly_map import upsample
from ..components.backbones import layers_at_strides
from ..components.flows import Flow2d, gaussian_nll
from ..components.precision import Layout, channels_last_helps
from ..components.training import seeded_init
from ..errors import ConfigError
from ..params import check_choice, check_range
from ..registry import register_detector
from .backbone import BackboneDetector
from .trained import TrainedDetector

log = logging.getLogger(__name__)

#: hidden channels / input channels of the coupling subnets when ``hidden_ratio`` is None
HIDDEN_RATIO = {"resnet18": 1.0, "wide_resnet50_2": 0.16, "efficientnet_lite0": 1.0, "efficientnet_lite2": 1.0}
STRIDES = (4, 8, 16)


class FastFlowModel(Layout, nn.Module):
    """Learned part: per scale l a LayerNorm affine (C_l, h_l, w_l) and a flow f_l."""

    def __init__(self, shapes: list[tuple[int, ...]], steps: int, hidden_ratio: float, clamp: float,
                 seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))  # channel permutations of the steps
        self.norm_weight = nn.ParameterList(nn.Parameter(torch.ones(s)) for s in shapes)
        self.norm_bias = nn.ParameterList(nn.Parameter(torch.zeros(s)) for s in shapes)
        self.flows = nn.ModuleList(Flow2d(c, steps, hidden_ratio, clamp, generator=g) for c, _, _ in shapes)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Normalised features [(B, C_l, h_l, w_l)] -> ([z_l (B, C_l, h_l, w_l)], NLL (B,) summed over l)."""
        zs, nll = [], feats[0].new_zeros(feats[0].shape[0], dtype=torch.float32)
        for f, w, b, flow in zip(feats, self.norm_weight, self.norm_bias, self.flows):
            z, logdet = flow(self.layout(f * w + b))
            zs.append(z)
            nll = nll + gaussian_nll(z, logdet)
        return zs, nll


def _normalise(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LayerNorm over (C, h, w) per sample, without affine (the affine is learned in FastFlowModel)."""
    # ints: a traced (ONNX) graph needs a static shape
    return {k: F.layer_norm(v, [int(s) for s in v.shape[1:]]) for k, v in feats.items()}


@register_detector("fastflow")
class FastFlow(BackboneDetector, TrainedDetector):
    exportable = True
    flow_: FastFlowModel  # learned: the flows on the backbone features

    def __init__(self, *, backbone: str = "efficientnet_lite2", layers: tuple[str, ...] | None = None,
                 weights: str = "imagenet", normalization: str = "weights", flow_steps: int = 8,
                 hidden_ratio: float | None = None, clamp: float = 2.0,
                 anomaly_map: str = "prob", epochs: int = 500, batch_size: int = 32, lr: float = 1e-3,
                 weight_decay: float = 1e-5, cache_features: bool = True, val_fraction: float = 0.0,
                 patience: int = 0, stop_on: str = "maps", map_tolerance: float = 0.05, min_delta: float = 0.0,
                 precision: str = "auto",
                 checkpoint_dir: str | None = None, seed: int = 0, device: str = "auto") -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.normalization = normalization
        self.flow_steps = flow_steps
        self.hidden_ratio = hidden_ratio
        self.clamp = clamp
        self.anomaly_map = anomaly_map
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.cache_features = cache_features
        self.val_fraction = val_fraction
        self.patience = patience
        self.stop_on = stop_on
        self.map_tolerance = map_tolerance
        self.min_delta = min_delta
        self.precision = precision
        self.checkpoint_dir = checkpoint_dir
        self.seed = seed
        self.device = device

    @classmethod
    def tiny_params(cls) -> dict[str, object]:
        return {"backbone": "efficientnet_lite0", "epochs": 3, "batch_size": 4}

    # ---- hooks -------------------------------------------------------------------------------
    def _validate_params(self) -> None:
        self._check_backbone_params()
        if not isinstance(self.weights, str):
            raise ConfigError(f"weights must be 'imagenet', 'random' or a checkpoint path; got {self.weights!r}")
        check_range("flow_steps", self.flow_steps, 1, 64, integer=True)
        if self.hidden_ratio is not None:
            check_range("hidden_ratio", self.hidden_ratio, 0, 8, low_open=True)
        check_range("clamp", self.clamp, 0, None, low_open=True)
        check_choice("anomaly_map", self.anomaly_map, ("prob", "nll"))
        check_range("weight_decay", self.weight_decay, 0, 1)
        check_choice("cache_features", self.cache_features, (True, False))
        self._check_train_params()

    def _setup(self) -> None:
        layers = list(self.layers) if self.layers is not None else layers_at_strides(self.backbone, STRIDES)
        self._backbone = self._create_backbone(layers)

    def _ratio(self) -> float:
        return HIDDEN_RATIO[self.backbone] if self.hidden_ratio is None else float(self.hidden_ratio)

    @torch.no_grad()
    def _build_modules(self) -> None:
        """FastFlowModel for the feature shapes of input_size_ (learned state restored by base)."""
        probe = self._backbone_features(torch.zeros(1, 3, *self.input_size_), cached=False)  # shapes only
        shapes = [tuple(f.shape[1:]) for f in probe.values()]
        self.flow_ = seeded_init(self.seed, lambda: FastFlowModel(
            shapes, self.flow_steps, self._ratio(), self.clamp, self.seed)).to(self.device_).eval()
        self.flow_.set_layout(channels_last_helps(self.device_))  # same function either way; speed differs by device

    def _features(self, images: torch.Tensor, cached: bool = True) -> list[torch.Tensor]:
        """images (B, 3, H, W) -> normalised features [(B, C_l, h_l, w_l)] on the device."""
        return list(_normalise(self._backbone_features(images, device=self.device_, cached=cached)).values())

    def _fit(self, images: torch.Tensor) -> None:
        self.input_size_ = [int(images.shape[2]), int(images.shape[3])]
        self._build_modules()
        log.info("fastflow: %s layers %s, hidden ratio %.2f, %d flow parameters", self.backbone,
                 list(self._backbone.layers), self._ratio(), sum(p.numel() for p in self.flow_.parameters()))
        if self.cache_features:  # frozen backbone, no augmentation: features once, epochs cost the flows only
            data: Any = {k: self.flow_.layout(v.to(self.device_)) for k, v in _normalise(self._backbone_features(
                images, batch_size=self.batch_size)).items()}  # row selections keep the layout

            def loss_fn(model: nn.Module, batch: Any, g: torch.Generator) -> torch.Tensor:
                return model(list(batch.values()))[1].mean()  # paper loss, mean over the batch
        else:
            data = images

            def loss_fn(model: nn.Module, batch: Any, g: torch.Generator) -> torch.Tensor:
                with torch.no_grad():  # shuffled batches never repeat: not worth caching
                    feats = self._features(batch, cached=False)
                return model(feats)[1].mean()

        def val_maps(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:  # for stop_on="maps"
            zs, nll = model(list(batch.values()) if self.cache_features else self._features(batch, cached=False))
            return self._map(zs, tuple(zs[0].shape[-2:])), nll.mean()  # maps at the finest grid (B, h_0, w_0), loss_fn

        self._train(self.flow_, data, loss_fn, images=images, val_maps=val_maps,
                    skip=("epochs", "checkpoint_dir", "cache_features", "anomaly_map", "min_delta", "precision",
                          "stop_on", "map_tolerance"))  # hashed by train

    def traced_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        return self._predict  # traces as is

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = tuple(images.shape[-2:])
        x = images if list(size) == self.input_size_ else F.interpolate(
            images, size=tuple(self.input_size_), mode="bilinear", align_corners=False, antialias=True)
        zs, _ = self.flow_(self._features(x))
        maps = upsample(self._map(zs, tuple(self.input_size_)), size)
        return maps.flatten(1).amax(1), maps

    def _map(self, zs: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """[z_l (B, C_l, h_l, w_l)] -> the anomaly map (B, *size): per scale upsampled, averaged over scales."""
        per_scale = []
        for z in zs:
            half_sq = 0.5 * z.pow(2).mean(1)  # (B, h_l, w_l) = -log p per channel, up to a constant
            m = torch.exp(-half_sq) if self.anomaly_map == "prob" else half_sq
            per_scale.append(upsample(m, size))
        maps = torch.stack(per_scale).mean(0)  # (B, *size)
        return -maps if self.anomaly_map == "prob" else maps
