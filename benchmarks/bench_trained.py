"""Benchmark the trained detectors (FastFlow, RIAD) on one MVTec AD category.

Reports image / pixel AUROC (flawmap.metrics.evaluate), seconds per training epoch, fit and predict
wall time, peak RSS of this process and, for FastFlow, the epoch time with the feature cache versus
recomputing backbone features every epoch. Run one method per process so peak RSS is its own:

    nice -n 10 python benchmarks/bench_trained.py fastflow --epochs 20 --out ff.json
    nice -n 10 python benchmarks/bench_trained.py riad --preset cpu --out riad.json

Training resumes from --checkpoint-dir after an interruption (same arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

from flawmap import get_detector
from flawmap.data import mvtec
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
    p.add_argument("--preset", default=None, help="RIAD preset name (riad.PRESETS), e.g. cpu or paper")
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

    data = mvtec.scan_category(a.root, a.category)
    tf = mvtec.Transform(resize=a.size)
    train_split = mvtec.load_split(data, "train", tf)
    test_split = mvtec.load_split(data, "test", tf)

    params: dict[str, object] = {"device": a.device, "checkpoint_dir": a.checkpoint_dir}
    if a.method == "riad" and a.preset:
        from flawmap.detectors.riad import PRESETS

        params.update(PRESETS[a.preset])
    if a.method == "fastflow" and a.backbone:
        params["backbone"] = a.backbone
    if a.epochs is not None:
        params["epochs"] = a.epochs
    if a.batch_size is not None:
        params["batch_size"] = a.batch_size
    det = get_detector(a.method, **params)
    log.info("%r", det)

    t0 = time.perf_counter()
    det.fit(train_split.images)
    fit_s = time.perf_counter() - t0
    rep = det.train_report
    t0 = time.perf_counter()
    res = det.predict(test_split.images)
    predict_s = time.perf_counter() - t0
    metrics = evaluate(test_split.labels, res.scores, test_split.masks, res.maps)

    out: dict[str, object] = {
        "method": a.method, "category": a.category, "size": a.size, "threads": a.threads, "preset": a.preset,
        "params": det.get_params(), "metrics": metrics, "fit_s": fit_s, "predict_s": predict_s,
        "predict_s_per_image": predict_s / len(test_split), "epochs_done": rep.epochs_done,
        "resumed_from": rep.resumed_from, "epoch_s": rep.epoch_seconds, "mean_epoch_s": _mean(rep.epoch_seconds),
        "final_train_loss": rep.train_losses[-1] if rep.train_losses else None,
        "train_losses": rep.train_losses, "n_train": len(train_split), "n_test": len(test_split),
    }
    if a.method == "fastflow" and a.compare_cache_epochs > 0:
        slow = get_detector("fastflow", **{**det.get_params(), "cache_features": False,
                                           "epochs": a.compare_cache_epochs, "checkpoint_dir": None})
        t0 = time.perf_counter()
        slow.fit(train_split.images)
        slow_epoch = _mean(slow.train_report.epoch_seconds)
        out["nocache_epoch_s"] = slow_epoch
        out["nocache_fit_s"] = time.perf_counter() - t0
        cached_epoch = _mean(rep.epoch_seconds)
        out["cache_speedup"] = slow_epoch / cached_epoch if slow_epoch and cached_epoch else None
    out["peak_rss_mib"] = peak_rss_mib()
    text = json.dumps(out, indent=2, default=str)
    print(json.dumps({k: v for k, v in out.items() if k not in ("params", "train_losses", "epoch_s")}, indent=2,
                     default=str))
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
