"""Small typed records shared across flawmap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AnomalyResult:
    """Raw detector output; higher = more anomalous.

    scores: (N,) float32 image-level anomaly scores.
    maps:   (N, H, W) float32 pixel-level anomaly maps at the input image size.
    """

    scores: np.ndarray
    maps: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.ndim != 1 or self.maps.ndim != 3 or len(self.scores) != len(self.maps):
            raise ValueError(
                f"AnomalyResult expects scores (N,) and maps (N,H,W); got {self.scores.shape} and {self.maps.shape}"
            )

    def __len__(self) -> int:
        return len(self.scores)
