"""Fidelity of PatchCore and PaDiM against the reference implementations, on MVTec AD bottle.

    python benchmarks/bench_fidelity.py --root ../shared/data/mvtec --category bottle --out /tmp/fidelity.csv

Two setups per method: the paper defaults (flawmap's defaults: resize 256, crop 224; PatchCore coreset 10%,
PaDiM all channels) and the issue's comparison setting (256 px, no crop; PatchCore coreset 1%; PaDiM a
random d = 100, seeds 0-2: the channel draw alone moves pixel AUROC by ~0.001). Rows per setup:

* ``0.1.0``: flawmap before this change (f_agg averaged the cells inside the feature map only; emulated
  here by forcing ``agg_padding_ = "valid"``, the rule saved models of that version keep).
* ``default``: this version (f_agg counts the cells outside the map as zeros, as the reference code's
  zero-padded unfold does; input normalised as the weights were trained).
* ``imagenet``: ``normalization="imagenet"``: ImageNet mean/std for the EfficientNet-Lite weights, which
  were trained on (x - 0.5) / 0.5: what the official PatchCore code and anomalib feed every backbone.
* ``anomalib``: ``imagenet`` plus nearest-neighbour upsampling of the patch map before the Gaussian
  (emulated here: anomalib's PatchCore ``F.interpolate`` default; the reference PatchCore and PaDiM codes
  upsample bilinearly, as flawmap does).
* ``tf-exact``: Google's exact EfficientNet-Lite statistics, mean 127 / std 128 on 0-255, instead of
  timm's rounded 0.5 / 0.5 (emulated).

Backbone features are cached per normalisation in a temporary feature cache, so the rows of one
normalisation share one backbone pass; the times therefore are not comparable and are not reported.
Reference figures (reported, not measured here): anomalib 2.7, same weights, data and coreset: PatchCore
pixel AUROC 0.987, PaDiM (d = 100) 0.980; an independent PatchCore 0.987; image AUROC equal.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

import flawmap.components.backbones as backbones
import flawmap.detectors.patchcore as patchcore_module
from flawmap import get_detector
from flawmap.components.features import FeatureCache
from flawmap.data import load_split, preprocessing, scan_category
from flawmap.filters import gaussian_blur
from flawmap.metrics import evaluate

FIELDS = ("method", "setup", "row", "image_auroc", "pixel_auroc", "aupro", "input", "load1")
SETUPS = {  # setup -> (preprocessing keywords, {method: params})
    "paper": ({}, {"patchcore": {}, "padim": {}}),
    "256-nocrop": ({"resize": 256, "crop": 0}, {"patchcore": {"coreset_ratio": 0.01}, "padim": {"n_features": 100}}),
}
ROWS = {"patchcore": ("0.1.0", "default", "imagenet", "anomalib", "tf-exact"), "padim": ("default", "imagenet")}


class _InsideCellsPatchCore(patchcore_module.PatchCore):
    """PatchCore with flawmap 0.1.0's f_agg border rule (the mean over the cells inside the map)."""

    agg_padding_ = property(lambda self: "valid", lambda self, value: None)


@contextlib.contextmanager
def _nearest_map_upsampling() -> Iterator[None]:
    def nearest(patch: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
        return gaussian_blur(F.interpolate(patch.float().unsqueeze(1), size=size, mode="nearest").squeeze(1), sigma)

    old, patchcore_module.anomaly_map = patchcore_module.anomaly_map, nearest
    try:
        yield
    finally:
        patchcore_module.anomaly_map = old


@contextlib.contextmanager
def _lite_stats(mean: tuple[float, ...], std: tuple[float, ...]) -> Iterator[None]:
    old = backbones.LITE_MEAN, backbones.LITE_STD
    backbones.LITE_MEAN, backbones.LITE_STD = mean, std
    try:
        yield
    finally:
        backbones.LITE_MEAN, backbones.LITE_STD = old


def build(method: str, row: str, params: dict[str, Any]) -> tuple[Any, contextlib.AbstractContextManager]:
    if row == "0.1.0":
        return _InsideCellsPatchCore(**params), contextlib.nullcontext()
    if row in ("imagenet", "anomalib"):
        ctx = _nearest_map_upsampling() if row == "anomalib" else contextlib.nullcontext()
        return get_detector(method, normalization="imagenet", **params), ctx
    if row == "tf-exact":
        return get_detector(method, **params), _lite_stats((127 / 255,) * 3, (128 / 255,) * 3)
    return get_detector(method, **params), contextlib.nullcontext()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec"))
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--methods", nargs="+", default=["patchcore", "padim"], choices=list(ROWS))
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--padim-seeds", type=int, nargs="+", default=[0, 1, 2], help="256-nocrop PaDiM channel draws")
    ap.add_argument("--out", default=None, help="CSV of the rows (default: none)")
    args = ap.parse_args()
    if not (Path(args.root) / args.category).is_dir():
        raise SystemExit(f"MVTec category not found: {Path(args.root) / args.category} (give --root)")
    data = scan_category(args.root, args.category)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp))
        for setup in args.setups:
            pre, per_method = SETUPS[setup]
            tf = preprocessing({"resize": 256, "crop": 224}, **pre)
            train, test = load_split(data, "train", tf, keep_uint8=True), load_split(data, "test", tf)
            for method in args.methods:
                seeds = args.padim_seeds if method == "padim" and "n_features" in per_method[method] else [0]
                for row in ROWS[method]:
                    for seed in seeds:
                        det, ctx = build(method, row, {**per_method[method], "seed": seed})
                        load1 = os.getloadavg()[0]
                        with ctx:
                            res = det.use_feature_cache(cache).fit(train.images).predict(test.images)
                        m = evaluate(test.labels, res.scores, test.masks, res.maps)
                        rec = {"method": method, "setup": setup, "row": row + (f" seed {seed}" if len(seeds) > 1 else ""),
                               **{k: round(m[k], 4) for k in ("image_auroc", "pixel_auroc", "aupro")},
                               "input": "x".join(map(str, tf.output_size)), "load1": round(load1, 2)}
                        print(rec, flush=True)
                        rows.append(rec)
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
    print(f"\n{args.category}: | method | setup | row | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['setup']} ({r['input']}) | {r['row']} | {r['image_auroc']:.4f} | "
              f"{r['pixel_auroc']:.4f} | {r['aupro']:.4f} |")


if __name__ == "__main__":
    main()
