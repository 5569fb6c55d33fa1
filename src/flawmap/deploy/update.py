"""Update a fitted model with new good images, without refitting (``flawmap update``).

    plan = plan_update(new_files, previous_calibration, fraction=0.3, seed=0)
    result = update_model("runs/bottle", plan, "runs/bottle-v2")

The new good images (e.g. parts after a lighting change, or false alarms an operator marked good) are split
with a seeded draw: ``max(1, round(fraction * N))`` of them are held out for calibration, the rest join the
model (``add_good`` of PatchCore, PaDiM and SPADE; FastFlow and RIAD learn weights and must be refitted).
The decision is then calibrated again with the rule of ``flawmap fit`` (``metrics.thresholds.calibrate``)
on good images the updated model did not see: the previous calibration images AND the held-out new ones, so
the threshold reflects the new look as well as the old. The new model gets a new id (its content hash), the
next ``model_version`` and records its parent; the old folder is never touched.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError, OutputError
from ..metrics.thresholds import MIN_CALIBRATION_IMAGES, calibrate, check_target_fpr
from .groups import holdout_groups

log = logging.getLogger(__name__)

UPDATABLE = ("patchcore", "padim", "spade")
DEFAULT_UPDATE_CALIBRATION_FRACTION = 0.3
_FIT_SOURCE = re.compile(r"(\d+) of (\d+) good images held out \(fraction ([0-9.eE+-]+), seed (\d+)\)")


@dataclass(frozen=True)
class UpdatePlan:
    """Which new images join the model, which calibrate it (with the previous calibration images)."""

    add: tuple[Path, ...]
    held_out: tuple[Path, ...]
    previous: tuple[Path, ...]
    source: str

    @property
    def calibration(self) -> tuple[Path, ...]:
        return (*self.previous, *self.held_out)


def plan_update(new_files: Sequence[Path], previous: Sequence[Path], *,
                fraction: float = DEFAULT_UPDATE_CALIBRATION_FRACTION, seed: int = 0) -> UpdatePlan:
    """Split the new good images (checked before any is decoded; see the module doc)."""
    files = [Path(f) for f in new_files]
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 < fraction < 1.0):
        raise ConfigError(f"calibration fraction must be a number in (0, 1) (e.g. 0.3); got {fraction!r}")
    if len(files) < 2:
        raise DataError(f"{len(files)} new good image(s): at least 2 are needed (one joins the model, one is held "
                        "out for calibration)")
    prev = [Path(f) for f in previous]
    if overlap := sorted(set(files) & set(prev)):
        raise DataError(f"{len(overlap)} new images are also calibration images (e.g. {overlap[0]}); the model must "
                        "not see its calibration images")
    n_hold = min(len(files) - 1, max(1, int(round(fraction * len(files)))))
    if n_hold + len(prev) < MIN_CALIBRATION_IMAGES:
        raise DataError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} held-out good images; the previous "
                        f"calibration gives {len(prev)} and {n_hold} of the {len(files)} new images are held out: give "
                        "the previous calibration images (--val-good DIR) or more new images")
    pick = holdout_groups(np.arange(len(files)), n_hold, seed)  # the fit's hold-out rule, each new image alone
    held = [f for f, c in zip(files, pick) if c]
    add = [f for f, c in zip(files, pick) if not c]
    source = (f"{len(prev)} previous calibration images + {n_hold} of {len(files)} new good images held out "
              f"(fraction {fraction:g}, seed {seed})")
    return UpdatePlan(tuple(add), tuple(held), tuple(prev), source)


def previous_calibration_files(extra: dict[str, Any]) -> list[Path] | None:
    """The previous calibration images of a model, when they can be known: recorded by an earlier update
    (``extra.calibration_files``), or re-drawn for a ``flawmap fit --train DIR`` / ``--data --category`` model
    (the same files, fraction and seed give the same draw; checked against the recorded counts). None: give
    them with --val-good."""
    from .calibration import plan_calibration

    files = extra.get("calibration_files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return [Path(f) for f in files]
    src = (extra.get("calibration") or {}).get("source", "") if isinstance(extra.get("calibration"), dict) else ""
    m = _FIT_SOURCE.search(src)
    if m is None:
        return None
    n_cal, n_all, fraction, seed = int(m[1]), int(m[2]), float(m[3]), int(m[4])
    try:
        if isinstance(extra.get("train"), str):
            from ..data import find_images

            train = find_images(extra["train"])
        elif isinstance(extra.get("data"), str) and isinstance(extra.get("category"), str):
            from ..data import resolve_data_root, scan_category

            train = [s.path for s in scan_category(resolve_data_root(extra["data"]), extra["category"]).train]
        else:
            return None
    except DataError:
        return None
    if len(train) != n_all:
        log.warning("the training folder now has %d images, not %d as at fit: its calibration draw cannot be "
                    "repeated", len(train), n_all)
        return None
    plan = plan_calibration(train, fraction=fraction, seed=seed, group_by="none")  # the random draw of older fits
    cal = [f for f, c in zip(plan.files, plan.split()[1]) if c]
    return cal if len(cal) == n_cal else None


@dataclass
class UpdateResult:
    path: Path
    model_id: str
    parent_id: str
    version: int
    added: int
    calibration: Any  # metrics.thresholds.Calibration
    seconds: float
    add_seconds: float


def update_model(model: str | Path, plan: UpdatePlan, out: str | Path, *, target_fpr: float | None = None,
                 device: str | None = None, skip_bad: bool = False) -> UpdateResult:
    """Add ``plan.add`` to the model at ``model``, recalibrate on ``plan.calibration``, save to ``out`` (a new or
    empty folder; never ``model`` itself)."""
    from ..data import Transform, load_files
    from ..model_file import check_save_target, load_detector, read_model_config
    from .predictor import calibration_of, model_id, model_version

    t0 = time.perf_counter()
    model, out = Path(model), Path(out)
    cfg = read_model_config(model)
    method, extra = cfg["detector"], dict(cfg.get("extra", {}))
    if method not in UPDATABLE:
        raise ConfigError(f"{model}: a {method} model learns network weights and cannot take new images without "
                          f"training again; refit it with `flawmap fit` (update works for: {', '.join(UPDATABLE)})")
    if out.resolve() == model.resolve():
        raise OutputError(f"--out {out} is the model folder itself; an update writes a new folder and leaves the "
                          "old one as it is")
    check_save_target(out, overwrite=False)
    old_cal = calibration_of(extra, str(model))
    if old_cal is None or "transform" not in extra:
        raise ConfigError(f"{model} has no calibration or preprocessing record (fitted by an older flawmap); refit it "
                          "with `flawmap fit`")
    fpr = check_target_fpr(old_cal.target_fpr if target_fpr is None else target_fpr)
    tf = Transform.from_dict(extra["transform"])
    det: Any = load_detector(model, device=device)  # PatchCore, PaDiM or SPADE (UPDATABLE): they have add_good
    if method == "padim" and not hasattr(det, "n_images_") and isinstance(extra.get("n_train"), int):
        det.n_images_ = int(extra["n_train"])  # fitted before the count was stored: `flawmap fit` recorded it
    new = load_files(plan.add, tf, desc="add", skip_bad=skip_bad, keep_uint8=True)
    cal = load_files(plan.calibration, tf, desc="calibration", skip_bad=skip_bad, keep_uint8=True)
    if len(cal) < MIN_CALIBRATION_IMAGES:
        raise DataError(f"only {len(cal)} readable calibration images; at least {MIN_CALIBRATION_IMAGES} are needed")
    t1 = time.perf_counter()
    det.add_good(new.images)
    add_s = time.perf_counter() - t1
    res = det.predict(cal.images)
    calibration = calibrate(res.scores, res.maps, fpr, source=plan.source)
    parent = model_id(model)
    version = model_version(extra) + 1
    history = list(extra.get("updates", [])) if isinstance(extra.get("updates"), list) else []
    history.append({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parent_model_id": parent,
                    "added": len(new), "held_out": len(plan.held_out), "add_seconds": round(add_s, 3),
                    "files": [str(p) for p in new.paths]})
    extra.update(calibration=calibration.to_dict(), model_version=version, parent_model_id=parent, updates=history,
                 calibration_files=[str(Path(p).absolute()) for p in cal.paths],
                 n_train=(extra["n_train"] + len(new)) if isinstance(extra.get("n_train"), int) else None)
    det.save(out, extra=extra, overwrite=False)
    log.info("update: %s + %d images -> %s (threshold %.6g)", model, len(new), out, calibration.image_threshold)
    return UpdateResult(out, model_id(out), parent, version, len(new), calibration, time.perf_counter() - t0, add_s)
