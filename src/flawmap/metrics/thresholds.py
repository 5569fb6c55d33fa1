"""Score normalisation and decision thresholds: the one place they live.

Detectors output raw scores (higher = more anomalous); everything that turns raw
scores into [0, 1] values or into binary decisions is here. Decisions are always
``value >= threshold``, the convention of the F1 metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, NotFittedError
from .auroc import as_array
from .f1 import f1_max, pixel_f1_max


@dataclass
class MinMaxNormalizer:
    """Affine map of [low, high] (fitted on reference scores) onto [0, 1], clamped."""

    low: float | None = None
    high: float | None = None

    @property
    def fitted(self) -> bool:
        return self.low is not None and self.high is not None

    def fit(self, values: Any) -> MinMaxNormalizer:
        """Take low/high as the min/max of the finite reference values."""
        v = as_array(values).astype(np.float64, copy=False).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise DataError("MinMaxNormalizer.fit: no finite reference value")
        self.low, self.high = float(v.min()), float(v.max())
        return self

    def transform(self, values: Any) -> np.ndarray:
        """(values - low) / (high - low) clamped to [0, 1]; float32 input stays float32."""
        if not self.fitted:
            raise NotFittedError("MinMaxNormalizer.transform called before fit")
        v = as_array(values)
        v = v if v.dtype.kind == "f" else v.astype(np.float64)
        span = self.high - self.low
        if span <= 0.0:  # constant reference: above it is 1, otherwise 0
            return (v > self.low).astype(v.dtype)
        return np.clip((v - self.low) / span, 0.0, 1.0).astype(v.dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {"kind": "minmax", "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MinMaxNormalizer:
        """Inverse of ``to_dict``."""
        if d.get("kind") != "minmax":
            raise ConfigError(f"MinMaxNormalizer.from_dict: expected kind 'minmax', got {d.get('kind')!r}")
        low, high = d.get("low"), d.get("high")
        if (low is None) != (high is None) or (low is not None and not float(low) <= float(high)):
            raise ConfigError(f"MinMaxNormalizer.from_dict: invalid low/high {low!r}/{high!r}")
        return cls(None if low is None else float(low), None if high is None else float(high))


def threshold_from_good(scores_good: Any, quantile: float = 0.99) -> float:
    """Threshold at the given quantile of scores of defect-free samples."""
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"threshold_from_good: quantile must be in [0, 1], got {quantile}")
    v = as_array(scores_good).astype(np.float64, copy=False).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise DataError(f"threshold_from_good: need finite scores, got {v.size} values")
    return float(np.quantile(v, quantile))


def f1_threshold(labels: Any, scores: Any) -> float:
    """The threshold that maximises F1 (see ``f1_max``)."""
    return f1_max(labels, scores)[1]


def apply_threshold(values: Any, threshold: float) -> np.ndarray:
    """Boolean decisions ``values >= threshold``."""
    return as_array(values) >= threshold


def image_threshold(labels: Any, scores: Any) -> float:
    """The image-score threshold of a labelled test set: F1-optimal; the median score when it has no defect."""
    lab = as_array(labels).astype(bool)
    return f1_threshold(lab, scores) if lab.any() else float(np.median(as_array(scores)))


def pixel_threshold(masks: Any, maps: Any) -> float | None:
    """The F1-optimal pixel threshold; None when the masks are absent or have a single class."""
    if masks is None:
        return None
    m = as_array(masks)
    if not m.any() or m.all():
        return None
    return float(pixel_f1_max(m, maps)[1])


def map_display_range(maps: Any, percentiles: tuple[float, float] = (1.0, 99.9), headroom: float = 1.0) -> tuple[float, float]:
    """Colour scale (low, high) of anomaly-map pictures: the given percentiles of all map values, the high
    one multiplied by ``headroom`` (e.g. 2 when the reference maps are of good images only, so that defects
    stay on the scale)."""
    lo_pct, hi_pct = percentiles
    if not 0.0 <= lo_pct <= hi_pct <= 100.0:
        raise ConfigError(f"map_display_range: percentiles must satisfy 0 <= low <= high <= 100; got {percentiles}")
    if not headroom > 0:
        raise ConfigError(f"map_display_range: headroom must be > 0; got {headroom}")
    v = as_array(maps).astype(np.float64, copy=False).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise DataError("map_display_range: no finite map value")
    return float(np.percentile(v, lo_pct)), float(np.percentile(v, hi_pct) * headroom)
