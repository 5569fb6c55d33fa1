"""Drift of the served model over a rolling window of the last N scored images.

Two numbers, both against what the calibration promised:

* the share of images flagged anomalous, with its 95% Wilson interval: the calibration promises at most
  ``target_fpr`` flagged GOOD parts, so a lower interval bound above the target means more flags than the
  calibration explains (a drift of the good parts, or a defect surge: both are worth a look);
* the two-sample Kolmogorov-Smirnov statistic between the recent raw scores and the calibration scores
  stored in the model (``Calibration.scores``), and its p-value: a shifted score distribution shows here
  before the flagged share moves.

``status`` is "warn" when either test fires (interval above the target, or KS p-value < ``KS_ALPHA``) once
the window holds at least ``MIN_IMAGES`` images; "ok" otherwise.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import numpy as np

from ..metrics.thresholds import Calibration

MIN_IMAGES = 30
KS_ALPHA = 0.01
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


class DriftMonitor:
    """The last ``window`` raw scores of one served model (its calibration: ``calibration``, may be None)."""

    def __init__(self, calibration: Calibration | None, window: int = 500) -> None:
        self.calibration = calibration
        self.window = int(window)
        self._scores: deque[float] = deque(maxlen=self.window)
        self._lock = threading.Lock()

    def add(self, score: float) -> None:
        with self._lock:
            self._scores.append(float(score))

    def report(self) -> dict[str, Any]:
        """{status, n, window, flagged, flagged_share, interval, target_fpr, ks, ks_pvalue}."""
        from scipy.stats import ks_2samp

        with self._lock:
            s = np.fromiter(self._scores, dtype=np.float64)
        cal, n = self.calibration, len(s)
        out: dict[str, Any] = {"status": "ok", "n": n, "window": self.window, "flagged": None, "flagged_share": None,
                               "interval": None, "target_fpr": None, "ks": None, "ks_pvalue": None}
        if cal is None or n == 0:
            return out
        k = int((s >= cal.image_threshold).sum())
        lo, hi = wilson_interval(k, n)
        out.update(flagged=k, flagged_share=k / n, interval=[lo, hi], target_fpr=cal.target_fpr)
        warn = False
        if cal.scores:
            res = ks_2samp(s, np.asarray(cal.scores, dtype=np.float64))
            out.update(ks=float(res.statistic), ks_pvalue=float(res.pvalue))
            warn = res.pvalue < KS_ALPHA
        if n >= MIN_IMAGES and (warn or lo > cal.target_fpr):
            out["status"] = "warn"
        return out
