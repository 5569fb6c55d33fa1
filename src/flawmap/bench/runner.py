"""One benchmark run: dataset -> detector.fit -> detector.predict -> metrics -> one tidy row.

Runs that differ only in the test-time corruption share one fit (``run_group``): the model is
fitted once on the clean training images and evaluated on every corrupted test set. Each run
also returns what the report needs so it never re-runs a model (``RunOutput.details``: per-image
scores and labels, a down-sampled pixel ROC curve; ``RunOutput.artifacts``: gallery PNGs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .. import __version__
from ..components.features import FeatureCache
from ..data import Split, Transform, load_split, preprocessing, scan_category
from ..factory import get_detector
from ..metrics import evaluate
from ..registry import detector_class
from ..types import AnomalyResult
from .memory import PeakRSS

log = logging.getLogger(__name__)

#: leading columns of the results table; every hyperparameter follows
FIRST_COLUMNS = (
    "method", "category", "backbone", "image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1",
    "fit_seconds", "predict_seconds_per_image", "peak_rss_mb", "n_train", "n_test", "resize", "crop", "aspect",
    "corruption", "severity", "p",
)
NO_CORRUPTION = "none"


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run; ``key`` identifies it in the results store."""

    method: str
    category: str
    data_root: str
    params: dict[str, Any] = field(default_factory=dict)
    resize: int | None = None  # None: the method's paper setting (flawmap.data.preprocessing)
    crop: int | None = None  # None: the paper setting; 0: no crop
    max_train: int | None = None  # use only the first N training images (quick runs)
    corruption: str | None = None  # test-time corruption (flawmap.data.corruptions); None = clean
    severity: int = 0  # 1..5 when corruption is set
    p: float = 0.0  # probability that a test image is corrupted
    corruption_seed: int = 0
    aspect: str | None = None  # None: the paper setting ("stretch"); "pad": letterbox (flawmap.data.transform)

    def transform(self) -> Transform:
        return preprocessing(detector_class(self.method).paper_transform, self.resize, self.crop, self.aspect)

    def full_params(self) -> dict[str, Any]:
        return {**detector_class(self.method).default_params(), **self.params}

    def key(self) -> str:
        cfg: dict[str, Any] = {
            "method": self.method, "category": self.category, "data_root": str(Path(self.data_root).resolve()),
            "params": self.full_params(), "transform": self.transform().to_dict(), "max_train": self.max_train}
        if self.corruption is not None:  # clean runs keep the keys they always had
            cfg["corruption"] = {"name": self.corruption, "severity": self.severity, "p": self.p,
                                 "seed": self.corruption_seed}
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def fit_key(self) -> str:
        """Identifies the fitted model: runs with equal fit_key differ only in the test corruption."""
        return replace(self, corruption=None, severity=0, p=0.0, corruption_seed=0).key()


@dataclass
class RunOutput:
    """One finished run: the results row, per-image details for the report and gallery PNGs."""

    key: str
    row: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes


@dataclass(frozen=True)
class RunOptions:
    """How runs are executed (not part of the run key)."""

    gallery: int = 2  # gallery panels per kind (best, worst, borderline); 0 = none
    gallery_tile: int = 160  # max side of each panel tile in pixels
    feature_cache: str | None = None  # feature cache folder (None: off)
    details: bool = True  # compute per-image details and the pixel ROC for the report
    threads: int | None = None  # torch threads in worker processes
    checkpoints: str | None = None  # folder of the training checkpoints of unfinished fits (None: off)


class SplitCache:
    """Decoded splits shared by the runs of a sweep (keyed by category and transform)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str, str], Split] = {}

    def get(self, root: str, category: str, split: str, transform: Transform) -> Split:
        key = (str(root), category, split, json.dumps(transform.to_dict(), sort_keys=True))
        if key not in self._cache:
            data = scan_category(root, category)
            self._cache[key] = load_split(data, split, transform)  # type: ignore[arg-type]
        return self._cache[key]


def corrupted_test(spec: RunSpec, test: Split) -> Split:
    """The test split with the spec's corruption applied (images and, for geometric ones, masks)."""
    if spec.corruption is None:
        return test
    from ..data.corruptions import corrupt

    images, masks = corrupt(spec.corruption, test.images, spec.severity, spec.corruption_seed, test.masks, p=spec.p)
    return Split(images, test.labels, masks, test.defect_types, test.paths)


def open_cache(options: RunOptions) -> FeatureCache | None:
    """The feature cache of options.feature_cache (None: off)."""
    return FeatureCache(Path(options.feature_cache)) if options.feature_cache else None


def _stats(cache: FeatureCache | None) -> dict[str, float]:
    return cache.stats.snapshot() if cache is not None else {}


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in after}


def run_group(specs: Sequence[RunSpec], splits: SplitCache | None = None,
              options: RunOptions | None = None) -> Iterator[tuple[RunOutput, AnomalyResult, Split]]:
    """Fit once (all specs must share ``fit_key``), then evaluate each spec's test set.

    Yields (RunOutput, raw result, test split) per spec, in order, as each finishes.
    """
    if not specs:
        return
    options = options or RunOptions()
    splits = splits or SplitCache()
    first = specs[0]
    if any(s.fit_key() != first.fit_key() for s in specs):
        raise ValueError("run_group: specs must differ only in their corruption")
    tf = first.transform()
    train = splits.get(first.data_root, first.category, "train", tf)
    clean_test = splits.get(first.data_root, first.category, "test", tf)
    train_images = train.images if first.max_train is None else train.images[: first.max_train]
    cache = open_cache(options)
    cached = cache is not None
    det = get_detector(first.method, **first.params).use_feature_cache(cache)
    params = det.get_params()  # the spec's settings, for the rows (before a checkpoint folder is set)
    ckpt = _checkpoint_dir(det, first, options)
    s0 = _stats(cache)
    with PeakRSS() as rss_fit:
        t0 = time.perf_counter()
        det.fit(train_images)
        fit_s = time.perf_counter() - t0
    fit_stats = _diff(_stats(cache), s0)
    for i, spec in enumerate(specs):
        test = corrupted_test(spec, clean_test)
        s1 = _stats(cache)
        with PeakRSS() as rss:
            t1 = time.perf_counter()
            res = det.predict(test.images)
            pred_s = time.perf_counter() - t1
        pred_stats = _diff(_stats(cache), s1)
        metrics = evaluate(test.labels, res.scores, test.masks, res.maps)
        # the shared fit's cache use is counted once, on the first run of the group (sums stay right)
        stats = {k: (fit_stats.get(k, 0) if i == 0 else 0) + pred_stats.get(k, 0) for k in pred_stats}
        row: dict[str, Any] = {
            "method": spec.method,
            "category": spec.category,
            "backbone": params.get("backbone"),
            **metrics,
            "fit_seconds": round(fit_s, 3),
            **_training_columns(det),
            "predict_seconds_per_image": round(pred_s / len(test.images), 4),
            "peak_rss_mb": round(max(rss_fit.peak_mb, rss.peak_mb), 1),
            "n_train": int(len(train_images)),
            "n_test": int(len(test.images)),
            "resize": tf.resize if isinstance(tf.resize, int) else list(tf.resize),
            "crop": tf.crop if tf.crop is None or isinstance(tf.crop, int) else list(tf.crop),
            "aspect": tf.aspect,
            "corruption": spec.corruption or NO_CORRUPTION,
            "severity": int(spec.severity) if spec.corruption else 0,
            "p": float(spec.p) if spec.corruption else 0.0,
            "corruption_seed": int(spec.corruption_seed) if spec.corruption else None,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
            "data_root": str(spec.data_root),
            "max_train": spec.max_train,
            "run_key": spec.key(),
            "fit_key": spec.fit_key(),
            "feature_cache": cached,
            "feature_cache_hits": int(stats.get("hits", 0)) if cached else None,
            "feature_cache_misses": int(stats.get("misses", 0)) if cached else None,
            "feature_seconds": round(float(stats.get("compute_seconds", 0.0)), 3) if cached else None,
            "flawmap_version": __version__,
            "torch_threads": torch.get_num_threads(),
            "resolved_device": str(det.device_),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        log.info("%s/%s: %s", spec.method, spec.category, {k: row[k] for k in ("image_auroc", "pixel_auroc", "aupro")})
        details, artifacts = run_details(test, res, options) if options.details else ({}, {})
        yield RunOutput(spec.key(), row, details, artifacts), res, test
    if ckpt is not None:  # every run of the group has been handed on to be stored: its fit will not be resumed
        shutil.rmtree(ckpt, ignore_errors=True)


def _training_columns(det: Any) -> dict[str, Any]:
    """A trained method's epochs: ``trained_epochs`` (run, incl. resumed ones), ``best_epoch`` (whose weights
    were kept; None: the last) and ``stopped_early`` (the stopping rule ended it before ``epochs``); nothing
    for methods without training."""
    rep = getattr(det, "train_report", None)
    if rep is None:
        return {}
    return {"trained_epochs": int(rep.epochs_done), "best_epoch": rep.best_epoch, "stopped_early": bool(rep.stopped_early)}


def _checkpoint_dir(det: Any, spec: RunSpec, options: RunOptions) -> Path | None:
    """A trained method's checkpoint folder under ``options.checkpoints`` (one per fit key), set on ``det``
    unless the spec gives its own: an interrupted sweep, run again, resumes the fit from its last epoch
    (the training loop checks that the checkpoint belongs to the same settings). None: nothing to set."""
    if not options.checkpoints or "checkpoint_dir" not in det.param_names() or det.checkpoint_dir is not None:
        return None
    path = Path(options.checkpoints) / spec.fit_key()
    det.set_params(checkpoint_dir=str(path))
    return path


def run_one(spec: RunSpec, splits: SplitCache | None = None,
            options: RunOptions | None = None) -> tuple[dict[str, Any], AnomalyResult, Split]:
    """Fit and evaluate one configuration; returns (row, raw result, test split)."""
    out, res, test = next(iter(run_group([spec], splits, options or RunOptions(gallery=0, details=False))))
    return out.row, res, test


def execute_group(specs: Sequence[RunSpec], options: RunOptions, splits: SplitCache | None = None) -> list[RunOutput]:
    """Picklable entry point for worker processes and Ray tasks: all outputs of one fit group."""
    if options.threads:
        torch.set_num_threads(options.threads)
    return [out for out, _, _ in run_group(specs, splits if splits is not None else _worker_splits(), options)]


_WORKER_SPLITS: SplitCache | None = None


def _worker_splits() -> SplitCache:
    """One SplitCache per worker process, reused by the groups it runs."""
    global _WORKER_SPLITS
    if _WORKER_SPLITS is None:
        _WORKER_SPLITS = SplitCache()
    return _WORKER_SPLITS


def group_specs(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Specs grouped by fit_key (order of first appearance kept)."""
    groups: dict[str, list[RunSpec]] = {}
    for s in specs:
        groups.setdefault(s.fit_key(), []).append(s)
    return list(groups.values())


# ---- what the report needs: per-image details and gallery panels ----------------------------------
def _roc_points(labels: np.ndarray, scores: np.ndarray, n: int = 160) -> dict[str, list[float]] | None:
    """ROC curve down-sampled to about n points (fixed FPR grid, log-spaced near 0)."""
    from ..metrics import roc_curve

    if labels.all() or not labels.any():
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    grid = np.unique(np.r_[0.0, np.logspace(-4, 0, n // 2), np.linspace(0, 1, n // 2)])
    return {"fpr": [round(float(x), 6) for x in grid], "tpr": [round(float(x), 5) for x in np.interp(grid, fpr, tpr)]}


def _small(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, tile: int):
    """Down-scale image (3,H,W), map (H,W), mask (H,W) so the longer side is at most ``tile``."""
    import torch.nn.functional as F

    h, w = amap.shape
    scale = min(1.0, tile / max(h, w))
    if scale >= 1.0:
        return image, amap, mask
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    img = F.interpolate(torch.from_numpy(image)[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    am = F.interpolate(torch.from_numpy(amap)[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    m = None if mask is None else F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size,
                                                 mode="nearest")[0, 0].numpy() > 0.5
    return img.numpy(), am.numpy(), m


def pick_gallery(labels: np.ndarray, scores: np.ndarray, threshold: float, n: int) -> list[tuple[str, int]]:
    """(kind, index) for the n best, n worst and n borderline images.

    margin_i = (score_i - threshold) for defective images and (threshold - score_i) for good ones:
    best = largest margins (confidently right), worst = smallest (most wrong), borderline = closest
    to the threshold. An image is used once.
    """
    margin = np.where(labels.astype(bool), scores - threshold, threshold - scores)
    used: set[int] = set()
    out: list[tuple[str, int]] = []
    for kind, order in (("best", np.argsort(-margin, kind="stable")), ("worst", np.argsort(margin, kind="stable")),
                        ("borderline", np.argsort(np.abs(scores - threshold), kind="stable"))):
        picked = [int(i) for i in order if int(i) not in used][:n]
        used.update(picked)
        out += [(kind, i) for i in picked]
    return out


def run_details(test: Split, res: AnomalyResult, options: RunOptions) -> tuple[dict[str, Any], dict[str, bytes]]:
    from ..metrics.thresholds import image_threshold, map_display_range, pixel_threshold
    from ..viz.heatmap import panel, png_bytes, to_uint8_image

    labels = np.asarray(test.labels).astype(bool)
    scores = np.asarray(res.scores, dtype=np.float64)
    maps = np.asarray(res.maps)
    masks = None if test.masks is None else test.masks.numpy()
    image_thr = image_threshold(labels, scores)
    pixel_thr = pixel_threshold(masks, maps)
    pixel_roc = None if pixel_thr is None else _roc_points(masks.ravel(), maps.ravel())
    lo, hi = map_display_range(maps)
    names = []
    for p in test.paths:
        p = Path(p)
        names.append(f"{p.parent.name}/{p.name}")
    details: dict[str, Any] = {
        "scores": [float(s) for s in scores],
        "labels": [int(v) for v in labels],
        "defect_types": list(test.defect_types),
        "files": names,
        "image_threshold": image_thr,
        "pixel_threshold": pixel_thr,
        "pixel_roc": pixel_roc,
        "map_range": [lo, hi],
        "gallery": [],
    }
    artifacts: dict[str, bytes] = {}
    if options.gallery > 0:
        for j, (kind, i) in enumerate(pick_gallery(labels, scores, image_thr, options.gallery)):
            img, am, m = _small(test.images[i].numpy(), maps[i], None if masks is None else masks[i], options.gallery_tile)
            fname = f"{kind}_{j:02d}.png"
            artifacts[fname] = png_bytes(panel(to_uint8_image(img), am, lo, hi, pixel_thr, m), optimize=True)
            details["gallery"].append({"file": fname, "kind": kind, "index": i, "name": names[i],
                                       "score": float(scores[i]), "label": int(labels[i]),
                                       "defect_type": test.defect_types[i]})
    return details, artifacts


__all__ = ["RunSpec", "RunOptions", "RunOutput", "SplitCache", "run_one", "run_group", "execute_group", "group_specs",
           "FIRST_COLUMNS", "NO_CORRUPTION"]
