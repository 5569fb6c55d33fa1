"""Does the printed false-alarm rate hold on NEW parts? Calibration rules on a set with correlated good images.

    python benchmarks/bench_calibration_groups.py --out results/calibration_groups            # the surface set
    python benchmarks/bench_calibration_groups.py --tiles 40 --shots 6 --method padim --out ...

Builds the textured-surface set of ``flawmap.data.synthetic_surface`` (every training tile shot under
``--shots`` lightings; the test images are other tiles), then for each calibration rule fits the detector
with ``deploy.calibration.fit_calibrated`` and measures, on the new tiles, the observed false-alarm rate
(with its 95% Clopper-Pearson interval) against the printed guarantee, the miss rate on defects, image AUROC
and what the leakage check said. Rules: ``none`` (a random hold-out, images split from their group), ``auto``
(groups found in the images, the default), ``regex`` (the true tiles, ``tile(\\d+)``) and ``val-good`` (a
folder of other tiles). Writes ``calibration_groups.json`` and ``.md`` under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flawmap import get_detector
from flawmap.data import Transform, find_images, load_split, scan_category
from flawmap.data.synthetic_surface import make_surface_set
from flawmap.deploy.calibration import fit_calibrated, plan_calibration
from flawmap.metrics import binomial_interval, image_auroc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/calibration_groups"))
    ap.add_argument("--tiles", type=int, default=40, help="training tiles (each shot --shots times)")
    ap.add_argument("--shots", type=int, default=6)
    ap.add_argument("--test-tiles", type=int, default=60, help="new good tiles in the test set (2 shots each)")
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--rules", default="none,auto,regex,val-good")
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224, help="0 = no crop")
    ap.add_argument("--aspect", default="stretch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out / "data"
    cat = make_surface_set(root, n_train_tiles=args.tiles, shots=args.shots, n_test_tiles=args.test_tiles,
                           seed=args.seed)
    # a separate folder of OTHER tiles for --val-good (same lighting process, never trained on)
    val = make_surface_set(root, category="surface_tiles_val", n_train_tiles=20, shots=args.shots, n_test_tiles=0,
                           n_defect_tiles=0, seed=args.seed + 1000)
    tf = Transform(resize=args.resize, crop=args.crop or None, aspect=args.aspect)
    test = load_split(scan_category(root, cat.name), "test", tf)
    files = find_images(cat / "train" / "good")
    rows = []
    for rule in args.rules.split(","):
        if rule == "val-good":
            plan = plan_calibration(files, val_good=find_images(val / "train" / "good"), seed=args.seed)
        else:
            plan = plan_calibration(files, group_by=r"tile(\d+)" if rule == "regex" else rule, seed=args.seed,
                                    root=cat / "train" / "good")
        t0 = time.perf_counter()
        fitted = fit_calibrated(get_detector(args.method, seed=args.seed), plan, tf, device="cpu")
        seconds = time.perf_counter() - t0
        res = fitted.detector.predict(test.images)
        scores = np.asarray(res.scores)
        cal = fitted.calibration
        flagged = cal.decide(scores)
        good = test.labels == 0
        k, n = int(flagged[good].sum()), int(good.sum())
        lo, hi = binomial_interval(k, n)
        misses = int((~flagged[~good]).sum())
        leak = cal.leakage or {}
        rows.append({"rule": rule, "threshold": cal.image_threshold, "guaranteed_fpr": cal.guaranteed_fpr,
                     "n_calibration": cal.n_images, "false_alarms": k, "n_good_new": n, "fpr_new": k / n,
                     "fpr_ci": [lo, hi], "misses": misses, "n_defective": int((~good).sum()),
                     "miss_rate": misses / int((~good).sum()), "image_auroc": image_auroc(test.labels, scores),
                     "leak_flagged": leak.get("leak"), "ratio": leak.get("ratio"),
                     "ratio_groups": leak.get("ratio_groups"), "seconds": round(seconds, 1), "source": cal.source})
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration_groups.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                  "rows": rows}, indent=2))
    lines = ["| rule | calibration images | threshold | guaranteed FPR | FPR on new tiles (95% CI) | miss rate | "
             "image AUROC | leakage check (ratio vs groups) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['n_calibration']} | {r['threshold']:.3g} | {100 * r['guaranteed_fpr']:.1f}% | "
                     f"{r['false_alarms']}/{r['n_good_new']} = {100 * r['fpr_new']:.1f}% ({100 * r['fpr_ci'][0]:.1f}-"
                     f"{100 * r['fpr_ci'][1]:.1f}%) | {100 * r['miss_rate']:.1f}% | {r['image_auroc']:.3f} | "
                     f"{'LEAK' if r['leak_flagged'] else 'ok'} ({r['ratio']} vs {r['ratio_groups']}) |")
    (args.out / "calibration_groups.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
