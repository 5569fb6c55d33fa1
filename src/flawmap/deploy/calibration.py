"""Fit a detector on good images and calibrate its decision on good images it did not see.

    plan = plan_calibration(files, fraction=0.15, seed=0)          # or plan_calibration(files, val_good=...)
    fitted = fit_calibrated(det, plan, transform, target_fpr=0.01)
    det.save(out, extra=fitted.extra())

The calibration images are a seeded random fraction of the good images (at least
``MIN_CALIBRATION_IMAGES``), or a separate folder (``val_good``). The detector is fitted WITHOUT them and
that same detector is the one stored: its threshold (``metrics.thresholds.calibrate``) is then exactly
valid for it. Refitting on all images afterwards would change the score distribution (a larger
PatchCore memory bank gives lower scores to the same image) and void the guarantee, so it is not done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..metrics.evaluate import decision_rates
from ..metrics.thresholds import MIN_CALIBRATION_IMAGES, Calibration, calibrate, check_target_fpr

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_FRACTION = 0.15


@dataclass(frozen=True)
class CalibrationPlan:
    """Which files train the detector, which calibrate it (never the same), which defective files
    (optional) only measure the expected miss rate."""

    train: tuple[Path, ...]
    calibration: tuple[Path, ...]
    source: str
    val_bad: tuple[Path, ...] = ()


def plan_calibration(files: Sequence[Path], *, val_good: Sequence[Path] | None = None,
                     fraction: float = DEFAULT_CALIBRATION_FRACTION, seed: int = 0,
                     val_bad: Sequence[Path] = ()) -> CalibrationPlan:
    """Split good image files into training and calibration files (checked before any image is decoded).

    Without ``val_good``: max(MIN_CALIBRATION_IMAGES, round(fraction * N)) files drawn with ``seed``
    calibrate, the rest train (at least 2). With ``val_good``: all ``files`` train, ``val_good`` calibrates.
    """
    files = [Path(f) for f in files]
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 < fraction < 1.0):
        raise ConfigError(f"calibration fraction must be a number in (0, 1) (e.g. 0.15); got {fraction!r}")
    if val_good is not None:
        cal = [Path(f) for f in val_good]
        if len(cal) < MIN_CALIBRATION_IMAGES:
            raise DataError(f"the calibration folder has {len(cal)} good images; at least {MIN_CALIBRATION_IMAGES} "
                            "are needed (more give a finer false-alarm guarantee: 99 for 1%)")
        if overlap := sorted(set(cal) & set(files)):
            raise DataError(f"{len(overlap)} calibration images are also training images (e.g. {overlap[0]}); "
                            "calibration must use images the model does not see")
        train, source = files, f"{len(cal)} held-out good images (--val-good)"
    else:
        n_cal = max(MIN_CALIBRATION_IMAGES, int(round(fraction * len(files))))
        if len(files) - n_cal < 2:
            raise DataError(f"{len(files)} good images: after holding out {n_cal} for calibration (fraction "
                            f"{fraction:g}, at least {MIN_CALIBRATION_IMAGES}) fewer than 2 are left to train on; "
                            f"give at least {n_cal + 2} images, or a separate calibration folder (--val-good)")
        pick = set(np.random.default_rng(seed).permutation(len(files))[:n_cal].tolist())
        cal = [f for i, f in enumerate(files) if i in pick]
        train = [f for i, f in enumerate(files) if i not in pick]
        source = f"{n_cal} of {len(files)} good images held out (fraction {fraction:g}, seed {seed})"
    return CalibrationPlan(tuple(train), tuple(cal), source, tuple(Path(f) for f in val_bad))


@dataclass
class FittedModel:
    """A detector fitted on ``plan.train`` and its held-out calibration."""

    detector: Any
    calibration: Calibration
    transform: Any
    n_train: int
    fit_seconds: float
    skipped: list[Path] = field(default_factory=list)
    val_bad: dict[str, Any] | None = None

    def extra(self, **more: Any) -> dict[str, Any]:
        """The ``extra`` metadata of the model folder: transform, calibration, what it was fitted on."""
        out = {"transform": self.transform.to_dict(), "calibration": self.calibration.to_dict(),
               "n_train": self.n_train, "fit_seconds": round(self.fit_seconds, 3),
               "skipped_images": [str(p) for p in self.skipped]}
        if self.val_bad is not None:
            out["val_bad"] = self.val_bad
        return {**out, **more}


def fit_calibrated(det: Any, plan: CalibrationPlan, transform: Any, *, target_fpr: float = 0.01,
                   skip_bad: bool = False) -> FittedModel:
    """Load the training images (uint8, one decode at a time), fit, score the calibration images, calibrate;
    with ``plan.val_bad`` also the miss rate of the calibrated decision on those defective images."""
    from ..data import load_files

    check_target_fpr(target_fpr)
    train = load_files(plan.train, transform, desc="train", skip_bad=skip_bad, keep_uint8=True)
    if len(train) < 2:
        raise DataError(f"only {len(train)} readable training image(s) left; at least 2 are needed")
    cal = load_files(plan.calibration, transform, desc="calibration", skip_bad=skip_bad, keep_uint8=True)
    if len(cal) < MIN_CALIBRATION_IMAGES:
        raise DataError(f"only {len(cal)} readable calibration images left ({len(cal.skipped)} skipped); at least "
                        f"{MIN_CALIBRATION_IMAGES} are needed: give more good images or --val-good")
    bad = load_files(plan.val_bad, transform, desc="val-bad", skip_bad=skip_bad, keep_uint8=True) \
        if plan.val_bad else None
    n_train, skipped = len(train), [*train.skipped, *cal.skipped, *(bad.skipped if bad is not None else [])]
    t0 = time.perf_counter()
    det.fit(train.images)
    fit_s = time.perf_counter() - t0
    del train  # the training pixels are not needed any more
    res = det.predict(cal.images)
    calibration = calibrate(res.scores, res.maps, target_fpr, source=plan.source)
    val_bad = None
    if bad is not None:
        rates = decision_rates(np.ones(len(bad)), calibration.decide(det.predict(bad.images).scores))
        val_bad = {"n": rates["n_defective"], "misses": rates["misses"], "miss_rate": rates["miss_rate"]}
    log.info("calibration: threshold %.6g from %s", calibration.image_threshold, plan.source)
    return FittedModel(det, calibration, transform, n_train, fit_s, skipped, val_bad)
