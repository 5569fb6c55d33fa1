"""PatchCore on real MVTec AD bottle: quality, fit/predict time versus the backbone alone, peak RSS.

    python benchmarks/bench_patchcore.py --data ../shared/data/mvtec --category bottle --coreset 0.1

Prints one table and writes it as CSV (--out). Ratios come from one process so load noise hits
both sides alike; --repeats > 1 reports medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flawmap import get_detector
from flawmap.bench.memory import PeakRSS
from flawmap.bench.store import write_csv
from flawmap.components.features import extract_features
from flawmap.data import Transform, load_split, scan_category
from flawmap.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/mvtec")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--backbone", default="efficientnet_lite2")
    ap.add_argument("--coreset", type=float, nargs="+", default=[0.1])
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224, help="0 = no crop")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/patchcore_bottle.csv")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tf = Transform(resize=args.resize, crop=args.crop or None)
    data = scan_category(args.data, args.category)
    train, test = load_split(data, "train", tf), load_split(data, "test", tf)
    rows = []
    for ratio in args.coreset:
        det = get_detector("patchcore", backbone=args.backbone, coreset_ratio=ratio)
        bb_fit, fit, bb_pred, pred = [], [], [], []
        for _ in range(args.repeats):
            det._validate_params()
            det._setup()
            bb = det._backbone
            extract_features(bb, train.images[:8])  # warm-up
            t = time.perf_counter(); extract_features(bb, train.images); bb_fit.append(time.perf_counter() - t)
            with PeakRSS() as rss:
                t = time.perf_counter(); det.fit(train.images); fit.append(time.perf_counter() - t)
                t = time.perf_counter(); extract_features(det._backbone, test.images); bb_pred.append((time.perf_counter() - t) / len(test))
                t = time.perf_counter(); res = det.predict(test.images); pred.append((time.perf_counter() - t) / len(test))
        m = evaluate(test.labels, res.scores, test.masks, res.maps)
        med = statistics.median
        rows.append({
            "category": args.category, "backbone": args.backbone, "coreset_ratio": ratio,
            "resize": args.resize, "crop": args.crop or None, "memory_bank": int(det.memory_bank_.shape[0]),
            **{k: round(v, 4) if v is not None else None for k, v in m.items()},
            "backbone_train_s": round(med(bb_fit), 2), "fit_s": round(med(fit), 2),
            "fit_over_backbone": round(med(fit) / med(bb_fit), 2),
            "backbone_s_per_img": round(med(bb_pred), 4), "predict_s_per_img": round(med(pred), 4),
            "predict_over_backbone": round(med(pred) / med(bb_pred), 2),
            "peak_rss_mb": round(rss.peak_mb), "threads": torch.get_num_threads(), "repeats": args.repeats,
        })
        print(rows[-1], flush=True)
    write_csv(rows, args.out)
    keys = list(rows[0])
    print("\n" + " | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))


if __name__ == "__main__":
    main()
