"""Score normalisation and decision thresholds: the one place they live.

Detectors output raw scores (higher = more anomalous); everything that turns raw
scores into [0, 1] values or into binary decisions is here. Decisions are always
``value >= threshold``, the convention of the F1 metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError, DataError
from .auroc import as_array
from .f1 import f1_max, pixel_f1_max


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
    """Colour scale (low, high) of anomaly-map pictures: the given percentiles (p_lo, p_hi) of all map values,
    the span widened by ``headroom``: high = p_lo + headroom * (p_hi - p_lo) (e.g. 2 when the reference maps
    are of good images only, so that defects stay on the scale). Valid for maps of any sign (FastFlow's
    log-likelihood maps are negative): low <= high always."""
    lo_pct, hi_pct = percentiles
    if not 0.0 <= lo_pct <= hi_pct <= 100.0:
        raise ConfigError(f"map_display_range: percentiles must satisfy 0 <= low <= high <= 100; got {percentiles}")
    if not headroom > 0:
        raise ConfigError(f"map_display_range: headroom must be > 0; got {headroom}")
    v = as_array(maps).astype(np.float64, copy=False).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise DataError("map_display_range: no finite map value")
    lo, hi = float(np.percentile(v, lo_pct)), float(np.percentile(v, hi_pct))
    return lo, lo + headroom * (hi - lo)


# ---- calibration of a deployed model (held-out good images -> thresholds + normalisation) ----------
def check_target_fpr(target_fpr: Any) -> float:
    """The target false-alarm rate as a float in (0, 1); anything else raises ConfigError."""
    try:
        v = float(target_fpr)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(target_fpr, bool) or not 0.0 < v < 1.0:
        raise ConfigError(f"target FPR must be a number in (0, 1) (e.g. 0.01 for 1%); got {target_fpr!r}")
    return v


def fpr_threshold(scores_good: Any, target_fpr: float) -> tuple[float, float]:
    """Threshold t for the decision ``score >= t`` with false-alarm rate at most ``target_fpr`` on new good
    images, from n held-out good scores (split-conformal rule).

    With sorted scores s_(1) <= ... <= s_(n) and k = ceil((n + 1)(1 - target_fpr)), t is just above s_(k):
    a new exchangeable good score exceeds s_(k) with probability (n + 1 - k) / (n + 1) <= target_fpr.
    When k > n (too few images for the target: n + 1 < 1 / target_fpr) t is just above the maximum and the
    guaranteed rate is only 1 / (n + 1). Returns (t, guaranteed_fpr); ``guaranteed_fpr`` >= 1 / (n + 1) is
    the resolution the number of calibration images allows.
    """
    check_target_fpr(target_fpr)
    v = np.sort(as_array(scores_good).astype(np.float64, copy=False).ravel())
    if v.size == 0 or not np.isfinite(v).all():
        raise DataError(f"fpr_threshold: need finite scores of good images; got {v.size} values")
    n = v.size
    k = min(int(np.ceil((n + 1) * (1.0 - float(target_fpr)) - 1e-9)), n)  # 1-based rank
    return float(np.nextafter(v[k - 1], np.inf)), (n + 1 - k) / (n + 1)


#: the smallest number of held-out good images a calibration accepts (guaranteed FPR 1/9 = 11%)
MIN_CALIBRATION_IMAGES = 8


@dataclass(frozen=True)
class Calibration:
    """Decision rule of a deployed model, fitted on good images the model did not see.

    ``image_threshold``: image score threshold (anomalous iff score >= it) for ``target_fpr``;
    ``guaranteed_fpr``: the false-alarm rate the ``n_images`` calibration images can guarantee
    (>= 1 / (n_images + 1)); ``pixel_threshold``: map value above which a pixel is drawn inside the defect
    contour (the same rule on the per-image map maxima: at most ``target_fpr`` of good images show any
    pixel above it); ``score_low``: minimum calibration score, normalised to 0 (the threshold maps to 0.5,
    ``2 * threshold - score_low`` to 1); ``map_range``: display colour scale of maps; ``source``: which
    images were used (human-readable); ``scores`` / ``map_maxima``: the sorted calibration image scores
    and per-image map maxima (n floats each), kept so that another target FPR can be recomputed
    (``with_target_fpr``); ``leakage``: whether the calibration images looked like near-copies of training
    images (JSON-able diagnostic, None when not checked).
    """

    image_threshold: float
    pixel_threshold: float
    score_low: float
    target_fpr: float
    guaranteed_fpr: float
    n_images: int
    map_range: tuple[float, float]
    source: str = ""
    scores: tuple[float, ...] = ()
    map_maxima: tuple[float, ...] = ()
    leakage: Mapping[str, Any] | None = None  # the leakage check of the split (deploy.groups.leakage_report)

    def normalize(self, scores: Any) -> np.ndarray:
        """Raw scores (N,) -> [0, 1] (float64), monotone, ``image_threshold`` -> 0.5; a normalised score is
        >= 0.5 exactly when ``decide`` says anomalous (also at the rounding boundary)."""
        v = as_array(scores).astype(np.float64)
        anomalous = self.decide(v)
        span = self.image_threshold - self.score_low
        if span > 0.0:
            norm = np.clip(0.5 * (v - self.score_low) / span, 0.0, 1.0)
        else:  # a user threshold at or below the lowest calibration score: a step at the threshold
            norm = np.where(v > self.image_threshold, 1.0, 0.0)
        below_half = np.nextafter(0.5, 0.0)
        return np.where(anomalous, np.maximum(norm, 0.5), np.minimum(norm, below_half))

    def decide(self, scores: Any) -> np.ndarray:
        """Boolean verdicts (N,): anomalous iff raw score >= ``image_threshold``."""
        return apply_threshold(scores, self.image_threshold)

    def with_threshold(self, threshold: float) -> Calibration:
        """The same calibration with a user-given image threshold (e.g. ``--threshold``)."""
        from dataclasses import replace

        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
                or not np.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number; got {threshold!r}")
        return replace(self, image_threshold=float(threshold), source=f"{self.source}; threshold set by the user")

    def with_target_fpr(self, target_fpr: float) -> Calibration:
        """The image and pixel thresholds recomputed from the stored calibration scores for another target."""
        from dataclasses import replace

        if not self.scores or not self.map_maxima:
            raise ConfigError("this calibration stores no calibration scores, so another target FPR cannot be "
                              "computed; refit the model with `flawmap fit --target-fpr`")
        thr, guaranteed = fpr_threshold(self.scores, target_fpr)
        pix, _ = fpr_threshold(self.map_maxima, target_fpr)
        return replace(self, image_threshold=thr, pixel_threshold=pix, target_fpr=float(target_fpr),
                       guaranteed_fpr=guaranteed)

    def resolution_note(self) -> str | None:
        """One line when the calibration images are too few to guarantee the target FPR, else None."""
        if self.guaranteed_fpr <= self.target_fpr:
            return None
        return (f"{self.n_images} calibration images: the smallest false-alarm rate they can guarantee is "
                f"{100 * self.guaranteed_fpr:.1f}% (target {100 * self.target_fpr:g}%); give more good images or "
                f"--val-good (at least {int(np.ceil(1 / self.target_fpr)) - 1} for this target)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored as ``extra.calibration`` in a model's config.json)."""
        return {"kind": "held_out_fpr", "image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold,
                "score_low": self.score_low, "target_fpr": self.target_fpr, "guaranteed_fpr": self.guaranteed_fpr,
                "n_images": self.n_images, "map_range": list(self.map_range), "source": self.source,
                "scores": list(self.scores), "map_maxima": list(self.map_maxima),
                **({"leakage": dict(self.leakage)} if self.leakage is not None else {})}

    @classmethod
    def from_dict(cls, d: Any) -> Calibration:
        """Inverse of ``to_dict``; a malformed dict raises ConfigError naming the field."""
        if not isinstance(d, dict) or d.get("kind") != "held_out_fpr":
            raise ConfigError(f"calibration: expected a mapping with kind 'held_out_fpr'; got {d!r:.80}")
        try:
            mr = d["map_range"]
            if isinstance(mr, (str, bytes)) or len(mr) != 2:
                raise ValueError(f"map_range must be [low, high]; got {mr!r}")
            out = cls(image_threshold=float(d["image_threshold"]), pixel_threshold=float(d["pixel_threshold"]),
                      score_low=float(d["score_low"]), target_fpr=float(d["target_fpr"]),
                      guaranteed_fpr=float(d["guaranteed_fpr"]), n_images=int(d["n_images"]),
                      map_range=(float(mr[0]), float(mr[1])), source=str(d.get("source", "")),
                      scores=tuple(float(v) for v in d.get("scores", ())),
                      map_maxima=tuple(float(v) for v in d.get("map_maxima", ())),
                      leakage=dict(d["leakage"]) if isinstance(d.get("leakage"), dict) else None)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"calibration: missing or invalid field ({exc!r})") from None
        values = [out.image_threshold, out.pixel_threshold, out.score_low, *out.map_range, *out.scores, *out.map_maxima]
        if not all(np.isfinite(values)) or out.n_images < 1:
            raise ConfigError("calibration: thresholds, map_range and scores must be finite and n_images >= 1")
        if not 0.0 < out.target_fpr < 1.0 or not 0.0 < out.guaranteed_fpr <= 1.0 or out.map_range[0] > out.map_range[1]:
            raise ConfigError("calibration: target_fpr must be in (0, 1), guaranteed_fpr in (0, 1] and map_range "
                              f"low <= high; got {out.target_fpr!r}, {out.guaranteed_fpr!r}, {out.map_range!r}")
        if len(out.scores) not in (0, out.n_images) or len(out.map_maxima) != len(out.scores):
            raise ConfigError(f"calibration: scores and map_maxima must hold n_images = {out.n_images} values each")
        return out


def calibrate(scores_good: Any, maps_good: Any, target_fpr: float = 0.01, source: str = "") -> Calibration:
    """Calibration from the image scores (N,) and maps (N, H, W) of N held-out good images."""
    s = as_array(scores_good).astype(np.float64, copy=False).ravel()
    m = as_array(maps_good)
    if m.ndim != 3 or m.shape[0] != s.size:
        raise DataError(f"calibrate: expected maps (N, H, W) for N = {s.size} scores; got shape {m.shape}")
    maxima = m.reshape(len(m), -1).max(axis=1).astype(np.float64)
    thr, guaranteed = fpr_threshold(s, target_fpr)
    pix, _ = fpr_threshold(maxima, target_fpr)
    return Calibration(image_threshold=thr, pixel_threshold=pix, score_low=float(s.min()),
                       target_fpr=float(target_fpr), guaranteed_fpr=guaranteed, n_images=int(s.size),
                       map_range=map_display_range(m, headroom=2.0), source=source,
                       scores=tuple(float(v) for v in np.sort(s)), map_maxima=tuple(float(v) for v in np.sort(maxima)))
