"""All benchmark metrics of one detector run in one call."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .auroc import as_array, image_auroc, pixel_auroc, validate_maps, validate_scores
from .f1 import f1_max, pixel_f1_max
from .pro import aupro

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")


def evaluate(
    labels: Any, scores: Any, masks: Any | None, maps: Any | None, fpr_limit: float = 0.3
) -> dict[str, float | None]:
    """image_auroc, pixel_auroc, aupro, image_f1, pixel_f1; None where a metric is undefined.

    labels (N,) in {0, 1}, scores (N,), masks (N,H,W) or None (no ground truth),
    maps (N,H,W). Image metrics are None without anomalous images (image_auroc also
    without normal ones); pixel metrics are None without masks or when the masks lack
    defect or defect-free pixels. Unavailable is None, never 0.
    """
    y, s = validate_scores(labels, scores, "evaluate")
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if y.any():
        out["image_f1"] = f1_max(y, s)[0]
        if not y.all():
            out["image_auroc"] = image_auroc(y, s)
    if masks is None:
        return out
    if maps is None:
        raise ConfigError("evaluate: masks were given but maps is None")
    m, a = validate_maps(masks, maps, "evaluate")
    if len(a) != len(y):
        raise DataError(f"evaluate: {len(y)} labels but {len(a)} maps (maps shape {as_array(maps).shape})")
    if m.any() and not m.all():
        out["pixel_auroc"] = pixel_auroc(m, a)
        out["aupro"] = aupro(m, a, fpr_limit)
        out["pixel_f1"] = pixel_f1_max(m, a)[0]
    return out


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) two-sided interval for a rate of ``k`` events in ``n`` trials: the true rate
    lies in it with probability >= ``confidence``. (0, 1) when n = 0."""
    from scipy.stats import beta

    if not (isinstance(n, (int, np.integer)) and isinstance(k, (int, np.integer)) and 0 <= k <= n):
        raise DataError(f"binomial_interval: need integers 0 <= k <= n; got k={k!r}, n={n!r}")
    if not 0.0 < confidence < 1.0:
        raise DataError(f"binomial_interval: confidence must be in (0, 1); got {confidence!r}")
    if n == 0:
        return 0.0, 1.0
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def decision_rates(labels: Any, anomalous: Any) -> dict[str, float | int | None]:
    """What a stored decision does on a labelled set: labels (N,) in {0, 1}, verdicts (N,) bool.

    false_alarm_rate = good images flagged / good images, miss_rate = defective images passed / defective
    images (None when the set has no image of that label), with the counts behind them.
    """
    y = as_array(labels).astype(bool).ravel()
    a = as_array(anomalous).astype(bool).ravel()
    if y.shape != a.shape:
        raise DataError(f"decision_rates: {y.size} labels but {a.size} verdicts")
    n_good, n_bad = int((~y).sum()), int(y.sum())
    false_alarms, misses = int((a & ~y).sum()), int((~a & y).sum())
    return {"false_alarm_rate": false_alarms / n_good if n_good else None,
            "miss_rate": misses / n_bad if n_bad else None,
            "false_alarms": false_alarms, "n_good": n_good, "misses": misses, "n_defective": n_bad}
