"""The ``accurate`` PatchCore at screw size: coreset variants x hard sets -> fit s, peak RSS, picks/s, AUROCs.

    python benchmarks/bench_accurate.py --data /tmp/acc/hard320 --categories rotated_part oriented_texture \\
        --variants chunk32-1% chunk16-1% exact-1% --feature-cache /tmp/acc/fcache --out /tmp/acc/bench_accurate

Data: ``flawmap.data.synthetic.make_synthetic_mvtec(root, categories=(...), n_train=320, n_test_good=30,
n_test_defect=36, size=256)`` (screw-sized: 320 training images at 256 px), or an MVTec root (``--data
../shared/data/mvtec --categories bottle``, read in place).

A *variant* is data (:data:`VARIANTS`): PatchCore hyperparameters on top of the ``accurate`` preset
(its preprocessing: 256 px, no crop); ``paper`` is the paper's PatchCore and preprocessing for reference.
Each (category, variant) runs in its own subprocess, so ``peak_rss_mb`` (ru_maxrss of that process) is
the run's own peak. Variants of a category run one after the other (the same machine load, recorded as
the 1-minute load average). With ``--feature-cache`` the backbone features are computed once per
category (``backbone_s``: that cold pass over the training images at every orientation, timed once) and
every variant's ``fit_s`` then reads them from disk; ``fit_total_s`` = backbone_s + fit_s is the estimate
of a cold fit. ``coreset_s`` is the time inside the greedy (all chunks), ``picks_per_s`` = |M_C| / coreset_s.
Writes ``<out>.json`` and ``<out>.csv`` (rows appended as they finish) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: name -> (preset, PatchCore hyperparameters on top of it)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper": ("paper", {}),
    "exact-1%": ("accurate", {"coreset_ratio": 0.01}),
    "approx-1%": ("accurate", {"coreset_ratio": 0.01, "coreset_mode": "approx"}),
    **{f"chunk{c}-1%": ("accurate", {"coreset_ratio": 0.01, "coreset_chunk": c}) for c in (8, 16, 32, 64)},
    **{f"chunk{c}-10%": ("accurate", {"coreset_ratio": 0.1, "coreset_chunk": c}) for c in (8, 16)},
    **{f"chunk{c}-2%": ("accurate", {"coreset_ratio": 0.02, "coreset_chunk": c}) for c in (16, 32)},
    **{f"chunk{c}-1%-approx": ("accurate", {"coreset_ratio": 0.01, "coreset_chunk": c, "coreset_mode": "approx"})
       for c in (8, 16, 32)},
}
FIELDS = ("category", "variant", "preset", "params", "n_train", "n_test", "bank", "coreset", "backbone_s", "fit_s",
          "fit_total_s", "coreset_s", "picks_per_s", "predict_s_per_img", "peak_rss_mb", "image_auroc", "pixel_auroc",
          "aupro", "load_1min", "threads")


def run_one(data: str, category: str, variant: str, cache: str | None) -> dict[str, Any]:
    """One fit + predict + metrics in this process (called in a subprocess by :func:`main`)."""
    import torch

    from flawmap import get_detector
    from flawmap.components import coreset as cs
    from flawmap.components.features import FeatureCache
    from flawmap.data import load_split, scan_category
    from flawmap.metrics import evaluate
    from flawmap.presets import preset_transform

    preset, params = VARIANTS[variant]
    spent = [0.0]
    greedy = cs.greedy_coreset

    def timed(*a: Any, **k: Any) -> torch.Tensor:  # the greedy's own time, summed over the chunks
        t = time.perf_counter()
        out = greedy(*a, **k)
        spent[0] += time.perf_counter() - t
        return out
    cs.greedy_coreset = timed  # chunked_coreset looks it up in the module
    tf = preset_transform(preset, "patchcore")
    cat = scan_category(data, category)
    train, test = load_split(cat, "train", tf), load_split(cat, "test", tf)
    det = get_detector("patchcore", preset=preset, **params)
    if cache:
        det.use_feature_cache(FeatureCache(Path(cache)))
    load = os.getloadavg()[0]
    t = time.perf_counter()
    det.fit(train.images)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    res = det.predict(test.images)
    pred_s = (time.perf_counter() - t) / len(test.images)
    m = evaluate(test.labels, res.scores, test.masks, res.maps)
    k = int(det.memory_bank_.shape[0])
    r = det.train_rotations + 1
    return {"category": category, "variant": variant, "preset": preset, "params": json.dumps(params),
            "n_train": len(train.images), "n_test": len(test.images), "bank": len(train.images) * r * det.grid_[0] * det.grid_[1],
            "coreset": k, "fit_s": round(fit_s, 1), "coreset_s": round(spent[0], 1),
            "picks_per_s": round(k / max(spent[0], 1e-9)), "predict_s_per_img": round(pred_s, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **{key: None if m[key] is None else round(float(m[key]), 4) for key in ("image_auroc", "pixel_auroc", "aupro")},
            "load_1min": round(load, 2), "threads": torch.get_num_threads()}


def warm_cache(data: str, category: str, cache: str, presets: set[str]) -> float:
    """Fill the feature cache with the accurate preset's training and test features; the seconds of the
    training part (the backbone at every orientation: the fit's cold cost that the variants share)."""
    from flawmap import get_detector
    from flawmap.components.features import FeatureCache
    from flawmap.data import load_split, scan_category
    from flawmap.presets import preset_transform

    seconds = 0.0
    for preset in sorted(presets):
        tf = preset_transform(preset, "patchcore")
        cat = scan_category(data, category)
        train, test = load_split(cat, "train", tf), load_split(cat, "test", tf)
        det = get_detector("patchcore", preset=preset, coreset_ratio=1e-6).use_feature_cache(FeatureCache(Path(cache)))
        t = time.perf_counter()
        det.fit(train.images)  # 1e-6: one pick per chunk, the time is the backbone's
        if preset == "accurate":
            seconds = time.perf_counter() - t
        det.predict(test.images[:1])
        det.predict(test.images)
    return seconds


def _subprocess(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--categories", nargs="+", default=[])
    ap.add_argument("--variants", nargs="+", default=["chunk32-1%", "approx-1%", "exact-1%"], choices=list(VARIANTS))
    ap.add_argument("--feature-cache", default=None, help="folder; features computed once per category (see above)")
    ap.add_argument("--out", default="benchmarks/results/bench_accurate")
    ap.add_argument("--one", nargs=2, metavar=("CATEGORY", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--warm", metavar="CATEGORY", help=argparse.SUPPRESS)
    ap.add_argument("--presets", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.data, args.one[0], args.one[1], args.feature_cache)))
        return
    if args.warm:
        print(json.dumps({"backbone_s": round(warm_cache(args.data, args.warm, args.feature_cache, set(args.presets)), 1)}))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else []
    done = {(r["category"], r["variant"]) for r in rows}
    common = ["--data", args.data] + (["--feature-cache", args.feature_cache] if args.feature_cache else [])
    for category in args.categories:
        presets = sorted({VARIANTS[v][0] for v in args.variants})
        earlier = [r["backbone_s"] for r in rows if r["category"] == category and r["backbone_s"] is not None]
        if earlier:  # a resumed run: the cache is warm, its cold pass was timed before
            backbone_s = earlier[0]
        else:
            backbone_s = (_subprocess([*common, "--warm", category, "--presets", *presets])["backbone_s"]
                          if args.feature_cache else None)
        for variant in args.variants:
            if (category, variant) in done:
                continue
            row = _subprocess([*common, "--one", category, variant])
            row["backbone_s"] = backbone_s
            row["fit_total_s"] = round(row["fit_s"] + (backbone_s or 0.0), 1)
            rows.append(row)
            out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
            with out.with_suffix(".csv").open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                w.writeheader()
                w.writerows(rows)
            sys.stderr.write(json.dumps(row) + "\n")
    cols = ("category", "variant", "coreset", "fit_total_s", "coreset_s", "picks_per_s", "peak_rss_mb",
            "image_auroc", "pixel_auroc", "aupro", "predict_s_per_img", "load_1min")
    sys.stdout.write(f"`{' '.join(sys.argv)}`\n\n| {' | '.join(cols)} |\n|{'---|' * len(cols)}\n")
    for r in rows:
        sys.stdout.write(f"| {' | '.join(str(r.get(c)) for c in cols)} |\n")


if __name__ == "__main__":
    main()
