"""Fit a detector on good images and calibrate its decision on good images it did not see.

    plan = plan_calibration(files, fraction=0.15, seed=0, group_by="auto")   # or plan_calibration(files, val_good=...)
    fitted = fit_calibrated(det, plan, transform, target_fpr=0.01)
    det.save(out, extra=fitted.extra())

The calibration images are whole groups of correlated good images (``deploy.groups``: found in the images
by default, or sub-folders, or a regex over the paths) drawn with a seed until they are a fraction of the
good images (at least ``MIN_CALIBRATION_IMAGES``), or a separate folder (``val_good``). The threshold's
promise (split conformal, ``metrics.thresholds.fpr_threshold``) holds for new parts only if the calibration
images are like new parts: a shot of a training part under another light is not, so groups are never split;
the leakage check (``groups.leakage_report``) is stored with the calibration and says when the split still
looks like near-copies of training images. The detector is fitted WITHOUT the calibration images and
that same detector is the one stored: its threshold (``metrics.thresholds.calibrate``) is then exactly
valid for it. Refitting on all images afterwards would change the score distribution (a larger
PatchCore memory bank gives lower scores to the same image) and void the guarantee, so it is not done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..metrics.evaluate import decision_rates
from ..metrics.thresholds import MIN_CALIBRATION_IMAGES, Calibration, calibrate, check_target_fpr
from .groups import (
    distance_matrix,
    groups_from_paths,
    holdout_groups,
    image_descriptors,
    leakage_report,
    near_duplicate_groups,
    parse_group_by,
)

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_FRACTION = 0.15


@dataclass(frozen=True)
class CalibrationPlan:
    """Which good files there are and how calibration images will be drawn from them (checked before any
    image is decoded): ``files`` train the detector except the held-out ones; ``val_good`` (optional) are
    separate calibration files (then every file trains); ``groups`` (N,) the group of each file (None: found
    in the images at fit, ``group_by`` "auto"); ``n_calibration`` images (at least) are held out as whole
    groups with ``seed``; defective files (optional) only measure the expected miss rate."""

    files: tuple[Path, ...]
    val_good: tuple[Path, ...] | None
    group_by: str
    groups: tuple[int, ...] | None
    n_calibration: int
    seed: int
    fraction: float
    val_bad: tuple[Path, ...] = ()

    def readable(self, paths: Sequence[Path]) -> CalibrationPlan:
        """The plan restricted to the files that could be read (``paths``, a subset in the same order)."""
        ok = set(paths)
        keep = [i for i, f in enumerate(self.files) if f in ok]
        return replace(self, files=tuple(self.files[i] for i in keep),
                       val_good=None if self.val_good is None else tuple(f for f in self.val_good if f in ok),
                       groups=None if self.groups is None else tuple(self.groups[i] for i in keep))

    def split(self, found: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks (train, calibration) over ``files + val_good``; ``found`` are the groups found in
        the images, used when the plan's groups are None. Raises DataError naming the rule when whole groups
        cannot give at least MIN_CALIBRATION_IMAGES calibration images and 2 training images."""
        n = len(self.files)
        if self.val_good is not None:
            cal = np.r_[np.zeros(n, bool), np.ones(len(self.val_good), bool)]
            return ~cal, cal
        ids = np.asarray(self.groups if self.groups is not None else found, dtype=np.int64)
        if ids.shape != (n,):
            raise DataError(f"calibration split: need a group for each of the {n} images")
        cal = holdout_groups(ids, self.n_calibration, self.seed, max_cal=n - 2)
        n_groups = len(np.unique(ids))
        if cal.sum() < MIN_CALIBRATION_IMAGES or n - cal.sum() < 2:
            raise DataError(f"--group-by {self.group_by}: the {n} good images form {n_groups} group(s); holding out "
                            f"whole groups gives {int(cal.sum())} calibration and {int(n - cal.sum())} training images, "
                            f"but at least {MIN_CALIBRATION_IMAGES} and 2 are needed: give more parts, a finer "
                            "--group-by, or a separate calibration folder (--val-good)")
        return ~cal, cal

    def source(self, cal: np.ndarray, found_groups: int | None = None) -> str:
        """What calibrated the model, in words (stored in the calibration)."""
        if self.val_good is not None:
            return f"{len(self.val_good)} held-out good images (--val-good)"
        groups = len(set(self.groups)) if self.groups is not None else found_groups
        return (f"{int(cal.sum())} of {len(self.files)} good images held out as whole groups (group-by {self.group_by}: "
                f"{groups} groups; fraction {self.fraction:g}, seed {self.seed})")


def plan_calibration(files: Sequence[Path], *, val_good: Sequence[Path] | None = None,
                     fraction: float = DEFAULT_CALIBRATION_FRACTION, seed: int = 0,
                     val_bad: Sequence[Path] = (), group_by: str | None = "auto",
                     root: Path | None = None) -> CalibrationPlan:
    """Check the good image files and the calibration rule; nothing is decoded.

    Without ``val_good``: at least max(MIN_CALIBRATION_IMAGES, round(fraction * N)) files are held out as
    whole groups (``group_by``: "auto", "folder", "none" or a regex, ``deploy.groups``; paths relative to
    ``root``). With ``val_good``: all ``files`` train, ``val_good`` calibrates.
    """
    files = [Path(f) for f in files]
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 < fraction < 1.0):
        raise ConfigError(f"calibration fraction must be a number in (0, 1) (e.g. 0.15); got {fraction!r}")
    rule = parse_group_by(group_by)
    if val_good is not None:
        cal = [Path(f) for f in val_good]
        if len(cal) < MIN_CALIBRATION_IMAGES:
            raise DataError(f"the calibration folder has {len(cal)} good images; at least {MIN_CALIBRATION_IMAGES} "
                            "are needed (more give a finer false-alarm guarantee: 99 for 1%)")
        if overlap := sorted(set(cal) & set(files)):
            raise DataError(f"{len(overlap)} calibration images are also training images (e.g. {overlap[0]}); "
                            "calibration must use images the model does not see")
        return CalibrationPlan(tuple(files), tuple(cal), rule.describe(), None, len(cal), seed, fraction,
                               tuple(Path(f) for f in val_bad))
    n_cal = max(MIN_CALIBRATION_IMAGES, int(round(fraction * len(files))))
    if len(files) - n_cal < 2:
        raise DataError(f"{len(files)} good images: after holding out {n_cal} for calibration (fraction "
                        f"{fraction:g}, at least {MIN_CALIBRATION_IMAGES}) fewer than 2 are left to train on; "
                        f"give at least {n_cal + 2} images, or a separate calibration folder (--val-good)")
    ids = groups_from_paths(files, rule, root)
    plan = CalibrationPlan(tuple(files), None, rule.describe(), None if ids is None else tuple(ids.tolist()),
                           n_cal, seed, fraction, tuple(Path(f) for f in val_bad))
    if ids is not None:
        plan.split()  # a rule that cannot give whole-group calibration fails here, before any decoding
    return plan


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
    calibration_files: list[str] = field(default_factory=list)

    def extra(self, **more: Any) -> dict[str, Any]:
        """The ``extra`` metadata of the model folder: transform, calibration, what it was fitted on."""
        out = {"transform": self.transform.to_dict(), "calibration": self.calibration.to_dict(),
               "n_train": self.n_train, "fit_seconds": round(self.fit_seconds, 3),
               "skipped_images": [str(p) for p in self.skipped], "calibration_files": self.calibration_files}
        if self.val_bad is not None:
            out["val_bad"] = self.val_bad
        return {**out, **more}


def fit_calibrated(det: Any, plan: CalibrationPlan, transform: Any, *, target_fpr: float = 0.01,
                   skip_bad: bool = False, device: str = "auto") -> FittedModel:
    """Load the good images once (uint8), describe them (``groups.image_descriptors``), find their groups,
    hold out whole groups (``plan.split``), fit on the rest, score the held-out images, calibrate; run the
    leakage check on the split; with ``plan.val_bad`` also the miss rate of the calibrated decision."""
    from ..data import load_files

    check_target_fpr(target_fpr)
    good = load_files([*plan.files, *(plan.val_good or ())], transform, desc="good images", skip_bad=skip_bad,
                      keep_uint8=True)  # (N, 3, H, W) uint8, files then val_good, unreadable ones left out
    bad = load_files(plan.val_bad, transform, desc="val-bad", skip_bad=skip_bad, keep_uint8=True) \
        if plan.val_bad else None
    sub = plan.readable(good.paths)
    dist = distance_matrix(image_descriptors(good.images, device=device))  # (N, N)
    found, group_info = near_duplicate_groups(dist)
    train_mask, cal_mask = sub.split(found)
    if cal_mask.sum() < MIN_CALIBRATION_IMAGES:
        raise DataError(f"only {int(cal_mask.sum())} readable calibration images left ({len(good.skipped)} skipped); "
                        f"at least {MIN_CALIBRATION_IMAGES} are needed: give more good images or --val-good")
    if train_mask.sum() < 2:
        raise DataError(f"only {int(train_mask.sum())} readable training image(s) left; at least 2 are needed")
    leakage = leakage_report(dist, cal_mask, found, seed=plan.seed)
    leakage["group_by"] = plan.group_by
    leakage["auto_groups"] = {k: group_info[k] for k in ("groups", "largest", "in_groups", "cut")}
    n_train, skipped = int(train_mask.sum()), [*good.skipped, *(bad.skipped if bad is not None else [])]
    t0 = time.perf_counter()
    det.fit(good.images[train_mask])
    fit_s = time.perf_counter() - t0
    res = det.predict(good.images[cal_mask])
    source = sub.source(cal_mask, group_info["groups"] if plan.groups is None else None)
    calibration = replace(calibrate(res.scores, res.maps, target_fpr, source=source), leakage=leakage)
    val_bad = None
    if bad is not None:
        rates = decision_rates(np.ones(len(bad)), calibration.decide(det.predict(bad.images).scores))
        val_bad = {"n": rates["n_defective"], "misses": rates["misses"], "miss_rate": rates["miss_rate"]}
    log.info("calibration: threshold %.6g from %s", calibration.image_threshold, source)
    cal_files = [str(Path(p).absolute()) for p, c in zip(good.paths, cal_mask) if c]
    return FittedModel(det, calibration, transform, n_train, fit_s, skipped, val_bad, cal_files)


def recalibrate_model(path: str | Path, calibration: Calibration) -> dict[str, Any]:
    """Store ``calibration`` as the model folder's decision, the previous one appended to
    ``extra.calibration_history`` (with the time it was replaced); config.json is replaced atomically.
    Returns the new ``extra``."""
    from ..io import atomic_write
    from ..model_file import CONFIG_NAME, config_text, read_model_config

    path = Path(path)
    cfg = read_model_config(path)
    extra = dict(cfg.get("extra", {}))
    if "calibration" not in extra:
        raise DataError(f"{path} has no calibration to replace (fitted by an older flawmap); refit it with `flawmap fit`")
    old = dict(extra["calibration"])
    old["replaced_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra["calibration_history"] = [*extra.get("calibration_history", []), old]
    extra["calibration"] = calibration.to_dict()
    cfg["extra"] = extra
    atomic_write(path / CONFIG_NAME, lambda tmp: tmp.write_text(config_text(cfg)))
    read_model_config(path)  # the new file passes the same checks as any model file
    return extra


@dataclass(frozen=True)
class PromiseCheck:
    """The stored decision measured on independent good images (``flawmap check``): ``false_alarms`` of
    ``n`` flagged, the two-sided ``confidence`` interval of the rate (Clopper-Pearson), and the verdict:
    ``violated`` when even the interval's lower end is above the guaranteed rate, ``consistent`` when the
    observed rate is at most the guaranteed one or the whole interval is below it."""

    false_alarms: int
    n: int
    interval: tuple[float, float]
    guaranteed_fpr: float
    violated: bool
    consistent: bool

    @property
    def rate(self) -> float:
        return self.false_alarms / self.n


def check_promise(calibration: Calibration, good_scores: Any, confidence: float = 0.95) -> PromiseCheck:
    """Compare the stored decision's false alarms on independent good images (scores (N,)) with its promise."""
    from ..metrics import binomial_interval

    flagged = calibration.decide(good_scores)
    k, n = int(flagged.sum()), int(flagged.size)
    if n == 0:
        raise DataError("no good images to check the promise on")
    lo, hi = binomial_interval(k, n, confidence)
    g = calibration.guaranteed_fpr
    return PromiseCheck(k, n, (lo, hi), g, violated=lo > g, consistent=k / n <= g or hi < g)
