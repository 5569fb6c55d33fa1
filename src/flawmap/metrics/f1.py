"""Maximum F1 score over all thresholds (prediction is ``score >= threshold``).

F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P), evaluated exactly at every
distinct score value from one sort (same points as sklearn's precision_recall_curve).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError
from .auroc import binary_clf_curve, validate_maps, validate_scores


def _f1_max(y: np.ndarray, s: np.ndarray, what: str) -> tuple[float, float]:
    n_pos = int(y.sum())
    if n_pos == 0:
        raise DataError(f"{what}: F1 needs at least one anomalous sample, got none")
    fps, tps, thr = binary_clf_curve(y, s)
    f1 = 2.0 * tps / (tps + fps + n_pos)
    i = int(np.argmax(f1))  # ties: the highest threshold reaching the best F1
    return float(f1[i]), float(thr[i])


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """(best F1, threshold achieving it) for image scores (N,) and labels (N,) in {0, 1}."""
    return _f1_max(*validate_scores(labels, scores, "f1_max"), "f1_max")


def pixel_f1_max(masks: Any, maps: Any) -> tuple[float, float]:
    """(best F1, threshold) over all pixels of (N,H,W) maps against (N,H,W) masks."""
    m, a = validate_maps(masks, maps, "pixel_f1_max")
    return _f1_max(*validate_scores(m, a, "pixel_f1_max"), "pixel_f1_max")
