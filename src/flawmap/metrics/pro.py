"""Per-region overlap (PRO) curve and its normalised area (AUPRO).

Definition of the MVTec AD benchmark (Bergmann et al., "The MVTec Anomaly Detection
Dataset", IJCV 2021, Sec. 5.2): ground-truth defects are split into connected
components (8-connectivity, per image). At a threshold t,
  PRO(t) = mean over all components C of the dataset of |{p in C : score(p) >= t}| / |C|,
  FPR(t) = false-positive pixels / all defect-free pixels of the dataset.
AUPRO is the area under PRO(FPR) from FPR 0 to ``fpr_limit`` divided by ``fpr_limit``.
The curve is exact: one descending sort of all pixel scores, per-pixel contributions
accumulated, one curve point per distinct score value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, DataError
from .auroc import trapezoid, validate_maps, validate_scores

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _components(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Dataset-wide component ids (0 = defect-free pixel, 1..K) and K."""
    comps = np.zeros(masks.shape, dtype=np.int32)
    n = 0
    for i, mask in enumerate(masks):
        lab, k = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        comps[i] = np.where(lab > 0, lab + n, 0)
        n += k
    return comps, n


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct score value (descending thresholds), from (0, 0) to (1, 1)."""
    m, a = validate_maps(masks, maps, "pro_curve")
    _, s = validate_scores(m, a, "pro_curve")
    comps, n_comp = _components(m)
    n_neg = int(m.size - np.count_nonzero(m))
    if n_comp == 0:
        raise DataError("pro_curve: the ground-truth masks contain no defect pixel; PRO is undefined")
    if n_neg == 0:
        raise DataError("pro_curve: the ground-truth masks contain no defect-free pixel; FPR is undefined")
    # a defect pixel of component c adds 1 / (|c| * K) to PRO; a defect-free one adds 1 / n_neg to FPR
    sizes = np.bincount(comps.ravel(), minlength=n_comp + 1)
    weight = np.zeros(n_comp + 1, dtype=np.float64)
    weight[1:] = 1.0 / (sizes[1:].astype(np.float64) * n_comp)
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    c_sorted = comps.ravel()[order]
    del order, comps
    idx = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    del s_sorted
    pro = np.cumsum(weight[c_sorted])[idx]
    fp = np.cumsum(c_sorted == 0, dtype=np.int64)[idx]
    fpr = np.r_[0.0, fp / n_neg]
    pro = np.r_[0.0, np.clip(pro, 0.0, 1.0)]
    pro[-1] = 1.0  # every pixel predicted positive: all components fully covered (no rounding)
    return fpr, pro


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (in [0, 1])."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ConfigError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps)
    i = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points with fpr <= limit
    x, y = fpr[:i], pro[:i]
    if i < fpr.size:  # linear interpolation of PRO at exactly fpr_limit
        x0, x1, y0, y1 = fpr[i - 1], fpr[i], pro[i - 1], pro[i]
        x = np.r_[x, fpr_limit]
        y = np.r_[y, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)]
    return float(np.clip(trapezoid(x, y) / fpr_limit, 0.0, 1.0))
