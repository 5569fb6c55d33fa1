"""One benchmark run: dataset -> detector.fit -> detector.predict -> metrics -> one tidy row."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data import Split, Transform, load_split, scan_category
from ..metrics import evaluate
from ..registry import detector_class, get_detector
from ..types import AnomalyResult
from .memory import PeakRSS

log = logging.getLogger(__name__)

#: leading columns of the results table; every hyperparameter follows
FIRST_COLUMNS = (
    "method", "category", "backbone", "image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1",
    "fit_seconds", "predict_seconds_per_image", "peak_rss_mb", "n_train", "n_test", "resize", "crop",
)


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run; ``key`` identifies it in the results store."""

    method: str
    category: str
    data_root: str
    params: dict[str, Any] = field(default_factory=dict)
    resize: int | None = None  # None: the method's paper preprocessing
    crop: int | None = None
    max_train: int | None = None  # use only the first N training images (quick runs)

    def transform(self) -> Transform:
        paper = detector_class(self.method).paper_transform
        if self.resize is None:
            return Transform(resize=paper["resize"], crop=paper["crop"])
        return Transform(resize=self.resize, crop=self.crop)

    def full_params(self) -> dict[str, Any]:
        return {**detector_class(self.method).default_params(), **self.params}

    def key(self) -> str:
        cfg = {"method": self.method, "category": self.category, "data_root": str(Path(self.data_root).resolve()),
               "params": self.full_params(), "transform": self.transform().to_dict(), "max_train": self.max_train}
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:20]


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


def run_one(spec: RunSpec, splits: SplitCache | None = None) -> tuple[dict[str, Any], AnomalyResult, Split]:
    """Fit and evaluate one configuration; returns (row, raw result, test split)."""
    splits = splits or SplitCache()
    tf = spec.transform()
    train = splits.get(spec.data_root, spec.category, "train", tf)
    test = splits.get(spec.data_root, spec.category, "test", tf)
    train_images = train.images if spec.max_train is None else train.images[: spec.max_train]
    det = get_detector(spec.method, **spec.params)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        det.fit(train_images)
        t1 = time.perf_counter()
        res = det.predict(test.images)
        t2 = time.perf_counter()
    metrics = evaluate(test.labels, res.scores, test.masks, res.maps)
    params = det.get_params()
    row: dict[str, Any] = {
        "method": spec.method,
        "category": spec.category,
        "backbone": params.get("backbone"),
        **metrics,
        "fit_seconds": round(t1 - t0, 3),
        "predict_seconds_per_image": round((t2 - t1) / len(test.images), 4),
        "peak_rss_mb": round(rss.peak_mb, 1),
        "n_train": int(len(train_images)),
        "n_test": int(len(test.images)),
        "resize": tf.resize if isinstance(tf.resize, int) else list(tf.resize),
        "crop": tf.crop if tf.crop is None or isinstance(tf.crop, int) else list(tf.crop),
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        "data_root": str(spec.data_root),
        "max_train": spec.max_train,
        "run_key": spec.key(),
        "flawmap_version": __version__,
        "torch_threads": torch.get_num_threads(),
        "resolved_device": str(det.device_),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    log.info("%s/%s: %s", spec.method, spec.category, {k: row[k] for k in ("image_auroc", "pixel_auroc", "aupro")})
    return row, res, test


def format_table(rows: list[dict[str, Any]], cols: tuple[str, ...] = ("method", "category", "backbone", "image_auroc",
                 "pixel_auroc", "aupro", "image_f1", "pixel_f1", "fit_seconds", "predict_seconds_per_image",
                 "peak_rss_mb")) -> str:
    """Plain-text table for the terminal; unavailable metrics show as 'n/a'."""
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def spec_dict(spec: RunSpec) -> dict[str, Any]:
    return asdict(spec)


__all__ = ["RunSpec", "SplitCache", "run_one", "format_table", "FIRST_COLUMNS"]
