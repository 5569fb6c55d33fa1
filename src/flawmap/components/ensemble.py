"""Backbone ensembles (PatchCore, Roth et al. 2022, Sec. 4.4): several frozen ImageNet backbones run on
the same images, their locally aware patch features concatenated per patch into one memory bank.

``BackboneEnsemble`` is a drop-in for one ``FeatureExtractor`` (same ``name`` / ``weights_id`` /
``layers`` / ``device`` used by the feature cache, one ``forward``), returning every member's layers
under ``"<member index>/<layer>"`` keys; ``member_features`` splits such a dict back per member (a
plain single-backbone dict is one member). ``block_scales`` is the fitted weighting of the members:
each member's block of the bank is scaled to unit total variance, so every backbone contributes the
same expected squared distance between two bank patches, whatever its channel count or activation
scale (without it the backbone with the largest activations decides the nearest neighbours alone).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import FeatureExtractor, create_backbone


def check_backbones(backbone: object, layers: object, weights: object, allowed: Sequence[str]) -> None:
    """A ``backbone`` parameter: one name from ``allowed``, or a tuple of at least two distinct ones (an
    ensemble: then ``layers`` must be None and ``weights`` "imagenet" or "random"). Raises ConfigError."""
    names = list(backbone) if isinstance(backbone, (tuple, list)) else [backbone]
    for name in names:
        if name not in allowed:
            raise ConfigError(f"backbone={name!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
    if not isinstance(backbone, (tuple, list)):
        return
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"backbone={backbone!r}: an ensemble needs at least two distinct backbones from "
                          f"{', '.join(map(repr, allowed))} (or one name)")
    if layers is not None:
        raise ConfigError(f"layers must be None with an ensemble of backbones (each uses its stride 8 and 16 "
                          f"layers); got {layers!r}")
    if weights not in ("imagenet", "random"):
        raise ConfigError(f"weights (of an ensemble)={weights!r} is not allowed; allowed values: 'imagenet', 'random'")


class BackboneEnsemble(nn.Module):
    """Frozen members run on the same images: forward(x (N, 3, H, W) in [0, 1]) -> {"i/layer": (N, C, h, w)}."""

    def __init__(self, members: Sequence[FeatureExtractor]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.name = "+".join(m.name for m in members)
        self.weights_id = "+".join(m.weights_id for m in members)
        self.layers = tuple(f"{i}/{layer}" for i, m in enumerate(members) for layer in m.layers)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{i}/{k}": f for i, m in enumerate(self.members) for k, f in m(x).items()}


def create_ensemble(names: Sequence[str], *, weights: str | os.PathLike[str] = "imagenet",
                    normalization: str = "weights", device: str = "auto") -> BackboneEnsemble:
    """A ``BackboneEnsemble`` of ``names``, each member with its stride 8 + 16 layers (``create_backbone``)."""
    return BackboneEnsemble([create_backbone(n, None, weights=weights, normalization=normalization, device=device)
                             for n in names])


def member_features(feats: dict[str, torch.Tensor]) -> list[list[torch.Tensor]]:
    """{"i/layer": map} -> [[maps of member 0], [maps of member 1], ...] (in order); keys without a
    member prefix (one plain backbone) are one member."""
    groups: dict[str, list[torch.Tensor]] = {}
    for key, f in feats.items():
        member, sep, _ = key.partition("/")
        groups.setdefault(member if sep and member.isdigit() else "", []).append(f)
    return list(groups.values())


def block_scales(bank: torch.Tensor, dims: Sequence[int], chunk: int = 1 << 16) -> torch.Tensor:
    """Per-member scale (K,) of a bank (M, sum_b D_b) made of K column blocks of widths ``dims``:
    1 / sqrt(total variance of the block), the variance summed over its columns."""
    total = torch.zeros(bank.shape[1], dtype=torch.float64)
    squares = torch.zeros(bank.shape[1], dtype=torch.float64)
    for s in range(0, len(bank), chunk):  # moments in float64, chunk by chunk (no copy of the bank)
        x = bank[s:s + chunk].to(torch.float64)
        total += x.sum(0)
        squares += x.pow(2).sum(0)
    var = (squares / len(bank) - (total / len(bank)).pow(2)).clamp_min(0.0)  # (sum_b D_b,)
    blocks = torch.split(var, list(dims))
    return torch.stack([b.sum().clamp_min(1e-12).rsqrt() for b in blocks]).float()


__all__ = ["BackboneEnsemble", "block_scales", "check_backbones", "create_ensemble", "member_features"]
