"""Benchmark the trained detectors (FastFlow, RIAD) on one MVTec AD category.

Reports image / pixel AUROC (flawmap.metrics.evaluate), seconds per training epoch, fit and predict
wall time, peak RSS of this process and, for FastFlow, the epoch time with the feature cache versus
recomputing backbone features every epoch. Run one method per process so peak RSS is its own:

    nice -n 10 python benchmarks/bench_trained.py fastflow --epochs 20 --out ff.json
    nice -n 10 python benchmarks/bench_trained.py riad --preset cpu-quick --out riad.json
    # timing only, at paper settings: 1 epoch on the first 16 training images, 8 test images spread over the set
    python benchmarks/bench_trained.py riad --epochs 1 --max-train 16 --max-test 8 --out riad_paper.json

``--preset`` is a flawmap.presets name (paper, cpu-quick, fast). ``--max-train`` / ``--max-test`` time on the
first N images only; ``epoch_s_full`` then extrapolates seconds per epoch to the whole training set
(train images / images per second). Training resumes from --checkpoint-dir after an interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

import torch

from flawmap import get_detector
from flawmap.data import Transform, load_split, scan_category
from flawmap.metrics.evaluate import evaluate

log = logging.getLogger("bench_trained")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["fastflow", "riad"])
    p.add_argument("--root", default="/work/shared/data/mvtec", help="MVTec AD root folder")
    p.add_argument("--category", default="bottle")
    p.add_argument("--size", type=int, default=256, help="images are resized to size x size on loading")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs (default: detector/preset)")
    p.add_argument("--preset", default=None, help="flawmap.presets name: paper, cpu-quick, fast")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="hyperparameter on top of the preset (JSON value or a bare string), e.g. --param base_channels=16")
    p.add_argument("--max-train", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--max-test", type=int, default=None, help="predict N evenly spread test images only")
    p.add_argument("--backbone", default=None, help="FastFlow backbone (default: the detector's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--compare-cache-epochs", type=int, default=1,
                   help="FastFlow: also time this many epochs with cache_features=False (0: skip)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a busy shared box)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)

    data = scan_category(a.root, a.category)
    tf = Transform(resize=a.size)
    train_split = load_split(data, "train", tf)
    test_split = load_split(data, "test", tf)
    n_train_full = len(train_split)
    train_images = train_split.images[:a.max_train]
    n_test = len(test_split) if a.max_test is None else min(a.max_test, len(test_split))
    pick = torch.linspace(0, len(test_split) - 1, n_test).round().long()  # evenly spread: good and defective
    test_images, test_labels = test_split.images[pick], test_split.labels[pick.numpy()]
    test_masks = test_split.masks[pick] if test_split.masks is not None else None

    params: dict[str, object] = {"device": a.device, "checkpoint_dir": a.checkpoint_dir}
    if a.preset:
        from flawmap.presets import preset_params

        params.update(preset_params(a.preset, a.method))
    for kv in a.param:
        key, _, value = kv.partition("=")
        try:
            v = json.loads(value)
        except ValueError:  # a bare word: a string
            v = value
        params[key] = tuple(v) if isinstance(v, list) else v
    if a.method == "fastflow" and a.backbone:
        params["backbone"] = a.backbone
    if a.epochs is not None:
        params["epochs"] = a.epochs
    if a.batch_size is not None:
        params["batch_size"] = a.batch_size
    det = get_detector(a.method, **params)
    log.info("%r", det)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    det.fit(train_images)
    fit_s = time.perf_counter() - t0
    rep = det.train_report
    t0 = time.perf_counter()
    res = det.predict(test_images)
    predict_s = time.perf_counter() - t0
    two_classes = len(set(test_labels.tolist())) == 2
    metrics = evaluate(test_labels, res.scores, test_masks, res.maps) if two_classes else None
    mean_epoch = _mean(rep.epoch_seconds)
    n_fit = len(train_images) - round(len(train_images) * getattr(det, "val_fraction", 0.0))  # images per epoch
    out: dict[str, object] = {
        "method": a.method, "category": a.category, "size": a.size, "threads": a.threads, "preset": a.preset,
        "params": det.get_params(), "metrics": metrics, "fit_s": fit_s, "predict_s": predict_s,
        "predict_s_per_image": predict_s / len(test_images), "epochs_done": rep.epochs_done,
        "resumed_from": rep.resumed_from, "epoch_s": rep.epoch_seconds, "mean_epoch_s": mean_epoch,
        "train_images_per_s": n_fit / mean_epoch if mean_epoch else None,
        "epoch_s_full": mean_epoch * n_train_full / len(train_images) if mean_epoch else None,
        "best_epoch": rep.best_epoch, "stopped_early": rep.stopped_early,
        "final_train_loss": rep.train_losses[-1] if rep.train_losses else None,
        "train_losses": rep.train_losses, "val_losses": rep.val_losses,
        "n_train": len(train_images), "n_train_full": n_train_full, "n_test": len(test_images),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    if a.method == "fastflow" and a.compare_cache_epochs > 0:
        slow = get_detector("fastflow", **{**det.get_params(), "cache_features": False,
                                           "epochs": a.compare_cache_epochs, "checkpoint_dir": None})
        t0 = time.perf_counter()
        slow.fit(train_images)
        slow_epoch = _mean(slow.train_report.epoch_seconds)
        out["nocache_epoch_s"] = slow_epoch
        out["nocache_fit_s"] = time.perf_counter() - t0
        cached_epoch = _mean(rep.epoch_seconds)
        out["cache_speedup"] = slow_epoch / cached_epoch if slow_epoch and cached_epoch else None
    out["peak_rss_mib"] = peak_rss_mib()
    text = json.dumps(out, indent=2, default=str)
    print(json.dumps({k: v for k, v in out.items() if k not in ("params", "train_losses", "val_losses", "epoch_s")}, indent=2,
                     default=str))
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
