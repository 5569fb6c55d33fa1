"""PatchCore rotation coverage, test-time rotations and backbone ensembles: named settings -> one table.

    python benchmarks/ablation_rotation_ensemble.py --data synthetic-hard --settings base rot-train3 ens-l0l2
    python benchmarks/ablation_rotation_ensemble.py --data ../shared/data/mvtec --categories bottle --resize 224

Every setting is a dict of PatchCore parameters on top of the run's common ones (``--coreset``); a
setting with ``"score_ensemble"`` is the other ensemble form, prototyped here: one PatchCore per
backbone, each detector's image scores and maps standardised with the mean / std of its own scores on
its TRAINING images (fitted state, no test image involved), then averaged. Categories are the outer
loop and settings the inner one, so every setting of a category runs under about the same machine
load (recorded per row as the 1-minute load average). One CSV row per (category, setting), appended
as soon as it is measured (``--out``; rows already there are skipped, so a killed run resumes), then a
markdown table of the means over categories. Timings: fit seconds, predict ms per test image, both
without a feature cache.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flawmap import get_detector
from flawmap.data import Transform, load_split, scan_category
from flawmap.metrics import evaluate

L0, L2, MN = "efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2"
SETTINGS: dict[str, dict[str, Any]] = {
    "base": {},
    "base-l0": {"backbone": L0},
    "base-mn": {"backbone": MN},
    "rot-train1": {"train_rotations": 1},
    "rot-train3": {"train_rotations": 3},
    "rot-train7": {"train_rotations": 7},
    "rot-train3-samek": {"train_rotations": 3, "coreset_per_copy": True},  # |M_C| as without rotations
    "rot-test3": {"test_rotations": 3},
    "rot-test7": {"test_rotations": 7},
    "rot-train3-test1": {"train_rotations": 3, "test_rotations": 1},
    "ens-l0l2": {"backbone": (L0, L2)},
    "ens-l2mn": {"backbone": (L2, MN)},
    "ens-l0l2mn": {"backbone": (L0, L2, MN)},
    "scores-l0l2mn": {"score_ensemble": (L0, L2, MN)},
    "scores-l2mn": {"score_ensemble": (L2, MN)},
    "scores-l0l2mn-rot-train7": {"score_ensemble": (L0, L2, MN), "train_rotations": 7},
    "ens-l0l2mn-rot-train3": {"backbone": (L0, L2, MN), "train_rotations": 3},
    "ens-l0l2-rot-train3": {"backbone": (L0, L2), "train_rotations": 3},
}
FIELDS = ["category", "setting", "image_auroc", "pixel_auroc", "aupro", "fit_s", "ms_per_image", "bank_rows",
          "bank_mb", "n_train", "n_test", "size", "load1"]


class ScoreEnsemble:
    """Separate banks, one PatchCore per backbone; scores and maps standardised by each detector's own
    training scores (mean, std over the training images / their map pixels), then averaged."""

    def __init__(self, backbones: tuple[str, ...], **params: Any) -> None:
        self.dets = [get_detector("patchcore", backbone=b, **params) for b in backbones]

    def fit(self, images: torch.Tensor) -> ScoreEnsemble:
        self.stats_ = []
        for det in self.dets:
            det.fit(images)
            r = det.predict(images)
            self.stats_.append((r.scores.mean(), r.scores.std() + 1e-12, r.maps.mean(), r.maps.std() + 1e-12))
        return self

    def predict(self, images: torch.Tensor) -> Any:
        out = [det.predict(images) for det in self.dets]
        scores = np.mean([(r.scores - m) / s for r, (m, s, _, _) in zip(out, self.stats_)], axis=0)
        maps = np.mean([(r.maps - m) / s for r, (_, _, m, s) in zip(out, self.stats_)], axis=0)
        return type(out[0])(scores=scores, maps=maps)

    @property
    def banks(self) -> list[torch.Tensor]:
        return [d.memory_bank_ for d in self.dets]


def build(setting: dict[str, Any], coreset: float, seed: int) -> Any:
    params = {"coreset_ratio": coreset, "seed": seed, **setting}
    if "score_ensemble" in params:
        return ScoreEnsemble(tuple(params.pop("score_ensemble")), **params)
    if params.pop("coreset_per_copy", False):
        params["coreset_ratio"] = coreset / (1 + params.get("train_rotations", 0))
    return get_detector("patchcore", **params)


def data_root(name: str) -> Path:
    if name in ("synthetic", "synthetic-hard"):
        from flawmap.data.synthetic import ensure_synthetic_dataset

        return ensure_synthetic_dataset(name=name)
    return Path(name)


def transform_for(data: Any, resize: int, crop: int) -> Transform:
    """--resize 0: each category at its own image size (aspect kept, no resampling)."""
    if resize:
        return Transform(resize=resize, crop=crop or None)
    from PIL import Image

    with Image.open(data.train[0].path) as im:
        return Transform(resize=(im.height, im.width), crop=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic-hard", help="MVTec-layout root, or synthetic / synthetic-hard")
    ap.add_argument("--categories", nargs="+", default=None, help="default: every category under --data")
    ap.add_argument("--settings", nargs="+", default=["base"], choices=list(SETTINGS))
    ap.add_argument("--max-train", type=int, default=40)
    ap.add_argument("--resize", type=int, default=0, help="0: the images' own size")
    ap.add_argument("--crop", type=int, default=0, help="0: no crop")
    ap.add_argument("--coreset", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/ablation_rotation_ensemble.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root(args.data)
    from flawmap.data.mvtec import list_categories

    categories = args.categories or list_categories(root)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        with out.open() as f:
            done = {(r["category"], r["setting"]) for r in csv.DictReader(f)}
    for cat in categories:
        data = scan_category(root, cat)
        tf = transform_for(data, args.resize, args.crop)
        train, test = load_split(data, "train", tf, keep_uint8=True), load_split(data, "test", tf)
        train_images = train.images[:args.max_train]
        for name in args.settings:
            if (cat, name) in done:
                continue
            det = build(SETTINGS[name], args.coreset, args.seed)
            t0 = time.perf_counter()
            det.fit(train_images)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = det.predict(test.images)
            ms = (time.perf_counter() - t0) / len(test.images) * 1000
            m = evaluate(test.labels, res.scores, None if test.masks is None else test.masks.numpy(), res.maps)
            banks = det.banks if isinstance(det, ScoreEnsemble) else [det.memory_bank_]
            row = {"category": cat, "setting": name, "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                   "aupro": m["aupro"], "fit_s": round(fit_s, 2), "ms_per_image": round(ms, 1),
                   "bank_rows": sum(map(len, banks)), "bank_mb": round(sum(b.numel() for b in banks) * 4 / 2**20, 2),
                   "n_train": len(train_images), "n_test": len(test.images),
                   "size": "x".join(map(str, test.images.shape[-2:])), "load1": round(os.getloadavg()[0], 2)}
            new = not out.is_file()
            with out.open("a", newline="") as f:
                w = csv.DictWriter(f, FIELDS)
                if new:
                    w.writeheader()
                w.writerow(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    print_table(out, args.settings)


def print_table(path: Path, settings: list[str]) -> None:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    print("\n| setting | categories | image AUROC | pixel AUROC | AUPRO | fit s | ms/image | bank MB | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in settings:
        rs = [r for r in rows if r["setting"] == name]
        if not rs:
            continue
        mean = lambda k: np.mean([float(r[k]) for r in rs if r[k] not in ("", "None")])  # noqa: E731
        print(f"| {name} | {len(rs)} | {mean('image_auroc'):.3f} | {mean('pixel_auroc'):.3f} | {mean('aupro'):.3f} | "
              f"{mean('fit_s'):.1f} | {mean('ms_per_image'):.0f} | {mean('bank_mb'):.1f} | {mean('load1'):.1f} |")


if __name__ == "__main__":
    main()
