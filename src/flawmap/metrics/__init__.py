"""Evaluation metrics (image/pixel AUROC, AUPRO, F1-max) and score thresholds."""

from __future__ import annotations

from .auroc import image_auroc, pixel_auroc, roc_curve
from .evaluate import METRIC_KEYS, binomial_interval, decision_rates, evaluate
from .f1 import f1_max, pixel_f1_max
from .pro import aupro, pro_curve
from .thresholds import (
    MIN_CALIBRATION_IMAGES,
    Calibration,
    calibrate,
    fpr_threshold,
    image_threshold,
    map_display_range,
    pixel_threshold,
)

__all__ = [
    "MIN_CALIBRATION_IMAGES",
    "Calibration",
    "binomial_interval",
    "decision_rates",
    "calibrate",
    "fpr_threshold",
    "METRIC_KEYS",
    "aupro",
    "evaluate",
    "f1_max",
    "image_auroc",
    "image_threshold",
    "map_display_range",
    "pixel_threshold",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_curve",
    "roc_curve",
]
