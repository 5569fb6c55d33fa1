"""ROC curve and ROC AUC at image and pixel level, in plain numpy.

Definition as in ``sklearn.metrics.roc_curve`` / ``roc_auc_score``: one ROC point per
distinct score value (tied scores form a single threshold, prediction is
``score >= threshold``), area by the trapezoid rule over those points.
The helpers below (conversion, validation, the sorted counting curve) are shared by
the other metric modules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError


def as_array(x: Any) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (torch is not imported)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def validate_scores(labels: Any, scores: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat bool labels and numeric scores of equal shape; NaN scores are rejected."""
    y, s = as_array(labels), as_array(scores)
    if y.shape != s.shape:
        raise DataError(f"{what}: labels shape {y.shape} does not match scores shape {s.shape}")
    y, s = y.ravel(), s.ravel()
    if y.size == 0:
        raise DataError(f"{what}: got no samples")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise DataError(f"{what}: labels must be 0/1 or bool, got values {np.unique(y)[:5]}")
        y = y.astype(bool)
    if s.dtype.kind not in "fiu":
        s = s.astype(np.float64)
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise DataError(f"{what}: scores contain NaN")
    return y, s


def validate_maps(masks: Any, maps: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,H,W) bool masks (non-bool: nonzero = defect) and (N,H,W) maps of the same shape."""
    m, a = as_array(masks), as_array(maps)
    if a.ndim != 3 or m.shape != a.shape:
        raise DataError(
            f"{what}: masks shape {m.shape} must equal maps shape {a.shape}, both (N, H, W)"
        )
    if m.dtype != bool:
        m = m != 0
    return m, a


def binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps, tps, thresholds) at each distinct score, thresholds decreasing (O(n log n))."""
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    tps_all = np.cumsum(y[order], dtype=np.int64)
    # last index of each group of equal scores: one threshold per distinct value
    idx = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = tps_all[idx]
    return idx + 1 - tps, tps, s_sorted[idx]


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid-rule area under the polyline (x, y)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _roc(y: np.ndarray, s: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"{what}: ROC AUC needs both classes, got {n_pos} anomalous and {n_neg} normal samples"
        )
    fps, tps, thr = binary_clf_curve(y, s)
    # start at (0, 0) with threshold +inf, like sklearn.metrics.roc_curve
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, thr.astype(np.float64)]


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, plus the (0, 0) start point."""
    return _roc(*validate_scores(labels, scores, "roc_curve"), "roc_curve")


def image_auroc(labels: Any, scores: Any) -> float:
    """ROC AUC of image scores (N,) against labels (N,) in {0, 1}; higher = anomalous."""
    fpr, tpr, _ = _roc(*validate_scores(labels, scores, "image_auroc"), "image_auroc")
    return trapezoid(fpr, tpr)


def pixel_auroc(masks: Any, maps: Any) -> float:
    """ROC AUC over all pixels of (N,H,W) anomaly maps against (N,H,W) ground-truth masks."""
    m, a = validate_maps(masks, maps, "pixel_auroc")
    fpr, tpr, _ = _roc(*validate_scores(m, a, "pixel_auroc"), "pixel_auroc")
    return trapezoid(fpr, tpr)
