"""Benchmark the trained detectors (FastFlow, RIAD) on one MVTec AD category.

Reports seconds per training epoch (median over the epochs of the run) and training images per
second, fit and predict wall time, image / pixel AUROC (flawmap.metrics.evaluate, unless
``--no-eval``), peak RSS of this process, the machine load, and for FastFlow optionally the epoch time
recomputing the backbone features every step (``--compare-cache-epochs``). Prints one markdown table
row set and writes JSON (``--out``). Run one configuration per process so peak RSS is its own:

    nice -n 10 python benchmarks/bench_trained.py fastflow --epochs 3 --no-eval --label after --out after.json

Before / after a change, run the same script against two source trees, interleaved in one time window
(the library is whatever ``flawmap`` imports, so PYTHONPATH picks the tree), then merge the JSON files
into one table:

    PYTHONPATH=/path/to/old/src python benchmarks/bench_trained.py fastflow --label before --out b1.json
    PYTHONPATH=src              python benchmarks/bench_trained.py fastflow --label after  --out a1.json
    python benchmarks/bench_trained.py --table b1.json a1.json ...

Defaults are FastFlow's paper settings (efficientnet_lite2, batch 32, 8 flow steps, resize 256 ->
crop 224); ``--param KEY=VALUE`` adds detector parameters (e.g. ``precision=bfloat16``), ``--preset``
starts from a preset. Training resumes from ``--checkpoint-dir`` after an interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import flawmap
from flawmap import get_detector
from flawmap.params import parse_params
from flawmap.data import Transform, load_split, scan_category

log = logging.getLogger("bench_trained")

COLUMNS = ("label", "method", "epochs", "s/epoch", "images/s", "fit s", "predict s", "image AUROC", "pixel AUROC",
           "peak RSS MiB", "load (1 min)", "flawmap")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(rows: list[dict[str, object]]) -> str:
    """Markdown table of result dicts (one row each) plus, per label pair, nothing more: ratios are the reader's."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        m = r.get("metrics") or {}
        cells = [r.get("label"), r["method"], r["epochs_done"], r["median_epoch_s"], r["train_images_per_s"], r["fit_s"],
                 r.get("predict_s"), m.get("image_auroc"), m.get("pixel_auroc"), r["peak_rss_mib"], r["load_1min"],
                 r["flawmap_src"]]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, object]]) -> str:
    """Median s/epoch per label and the ratio of each label to the first one."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(str(r.get("label")), []).append(float(r["median_epoch_s"]))  # type: ignore[arg-type]
    meds = {k: statistics.median(v) for k, v in by.items()}
    first = next(iter(meds.values()))
    return "\n".join(f"{k}: median s/epoch {v:.2f} over {len(by[k])} runs; {first / v:.2f}x vs {next(iter(meds))}"
                     for k, v in meds.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", nargs="?", choices=["fastflow", "riad"])
    p.add_argument("--table", nargs="+", metavar="JSON", help="merge result files into one markdown table and exit")
    p.add_argument("--root", default="../shared/data/mvtec", help="MVTec AD root folder")
    p.add_argument("--category", default="bottle")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224, help="center crop after resizing (0: none)")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs (default: detector/preset)")
    p.add_argument("--preset", default=None, help="flawmap preset (flawmap list --presets), e.g. cpu-quick, fast")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="detector parameter (YAML value)")
    p.add_argument("--max-train", type=int, default=None, help="use the first N training images only")
    p.add_argument("--no-eval", action="store_true", help="skip predict + metrics (timing runs)")
    p.add_argument("--compare-cache-epochs", type=int, default=0,
                   help="FastFlow: also time this many epochs with cache_features=False (0: skip)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a busy shared box)")
    p.add_argument("--device", default="auto")
    p.add_argument("--label", default=None, help="name of this configuration in the table (e.g. before / after)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.table:
        rows = [json.loads(Path(f).read_text()) for f in a.table]
        print(table(rows))
        print()
        print(summary(rows))
        return 0
    if a.method is None:
        p.error("a method (fastflow or riad) or --table is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)

    data = scan_category(a.root, a.category)
    tf = Transform(resize=a.resize, crop=a.crop or None)
    train_split = load_split(data, "train", tf)
    train_images = train_split.images[: a.max_train] if a.max_train else train_split.images

    params: dict[str, object] = {"device": a.device, "checkpoint_dir": a.checkpoint_dir}
    params.update(parse_params(a.param))  # the rule of `flawmap fit --param`
    if a.epochs is not None:
        params["epochs"] = a.epochs
    det = get_detector(a.method, **params, **({"preset": a.preset} if a.preset else {}))  # an old tree has no preset=
    log.info("%r (flawmap from %s)", det, flawmap.__file__)

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    det.fit(train_images)
    fit_s = time.perf_counter() - t0
    rep = det.train_report
    n_fit = len(train_images) - (round(len(train_images) * det.val_fraction) if det.val_fraction else 0)
    med = statistics.median(rep.epoch_seconds) if rep.epoch_seconds else None
    out: dict[str, object] = {
        "label": a.label, "method": a.method, "category": a.category, "resize": a.resize, "crop": a.crop,
        "threads": a.threads, "preset": a.preset, "flawmap_src": str(Path(flawmap.__file__).parents[1]),
        "params": det.get_params(), "fit_s": fit_s, "epochs_done": rep.epochs_done, "resumed_from": rep.resumed_from,
        "epoch_s": rep.epoch_seconds, "median_epoch_s": med, "train_images_per_s": n_fit / med if med else None,
        "n_train": len(train_images), "train_losses": rep.train_losses, "val_losses": rep.val_losses,
        "best_epoch": rep.best_epoch, "stopped_early": rep.stopped_early,
        "load_1min": max(load_before, os.getloadavg()[0]),
    }
    if not a.no_eval:
        from flawmap.metrics.evaluate import evaluate

        test_split = load_split(data, "test", tf)
        t0 = time.perf_counter()
        res = det.predict(test_split.images)
        out["predict_s"] = time.perf_counter() - t0
        out["metrics"] = evaluate(test_split.labels, res.scores, test_split.masks, res.maps)
        out["n_test"] = len(test_split)
    if a.method == "fastflow" and a.compare_cache_epochs > 0:
        slow = get_detector("fastflow", **{**det.get_params(), "cache_features": False,
                                           "epochs": a.compare_cache_epochs, "checkpoint_dir": None})
        slow.fit(train_images)
        slow_epoch = statistics.median(slow.train_report.epoch_seconds)
        out["nocache_epoch_s"] = slow_epoch
        out["cache_speedup"] = slow_epoch / med if med else None
    out["peak_rss_mib"] = peak_rss_mib()
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({k: v for k, v in out.items() if k not in ("params", "train_losses", "val_losses", "epoch_s")},
                     indent=2, default=str))
    print()
    print(table([out]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
