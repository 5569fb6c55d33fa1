"""BackboneDetector: the base of the detectors on a frozen ImageNet backbone (PaDiM, SPADE, PatchCore, FastFlow).

It declares the backbone parameters (``backbone``, ``layers``, ``weights``, ``normalization``), checks them,
builds the feature extractor, and owns the one feature path, through the optional feature cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..base import BaseDetector
from ..components import features
from ..components.backbones import NORMALIZATIONS, FeatureExtractor, create_backbone, list_backbones
from ..components.features import FeatureCache
from ..params import check_choice, check_layers


class BackboneDetector(BaseDetector):
    """A detector whose features come from ``self._backbone`` (subclasses take the backbone parameters as
    keyword-only ``__init__`` arguments and build it in ``_setup`` with :meth:`_create_backbone`)."""

    backbone: Any  # a backbone name (PatchCore: also a tuple of names, an ensemble)
    layers: tuple[str, ...] | None
    weights: str
    normalization: str
    _backbone: Any  # FeatureExtractor (PatchCore: or a BackboneEnsemble)
    #: what ``layers=None`` means, named when a ``layers`` value is refused
    default_layers: ClassVar[str] = "the stride 4, 8, 16 layers"

    def _check_backbone_params(self) -> None:
        """ConfigError for a bad ``backbone``, ``normalization`` or ``layers``."""
        check_choice("backbone", self.backbone, list_backbones())
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_layers(self.layers, self.default_layers)

    def _create_backbone(self, layers: Sequence[str] | None) -> FeatureExtractor:
        """The frozen extractor of ``layers`` (None: the stride 8 + 16 layers) with this detector's backbone
        parameters, on its device."""
        return create_backbone(self.backbone, layers, weights=self.weights, normalization=self.normalization,
                               device=self.device)  # type: ignore[attr-defined]

    def use_feature_cache(self, cache: FeatureCache | None) -> BackboneDetector:
        """Read and write the backbone features of later ``fit``/``predict`` calls in ``cache`` (None,
        the default: compute them, touch no file). Not a hyperparameter and not saved: it changes where
        features come from, never their values."""
        self._feature_cache = cache
        return self

    @property
    def feature_cache(self) -> FeatureCache | None:
        """The cache set by :meth:`use_feature_cache` (None: off)."""
        return getattr(self, "_feature_cache", None)

    def _backbone_features(self, images: torch.Tensor, *, batch_size: int | None = None, desc: str | None = None,
                           device: torch.device | str | None = None, cached: bool = True) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) float in [0, 1] -> {layer: (B, C_l, h_l, w_l)} of ``self._backbone``: the
        one feature path of backbone detectors (``extract_features``, through :attr:`feature_cache`
        unless ``cached=False``). On the CPU, or on ``device``; ``batch_size`` None: one batch."""
        # looked up in the module on each call: one patchable feature path
        return features.extract_features(self._backbone, images, batch_size=batch_size or max(1, len(images)),
                                         desc=desc or f"{self.name}: features", device=device,
                                         cache=self.feature_cache if cached else None)
