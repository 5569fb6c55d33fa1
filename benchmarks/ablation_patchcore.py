"""Generic ablation runner: named settings x datasets/categories -> one CSV row each + markdown tables.

    python benchmarks/ablation_patchcore.py --data synthetic-hard --settings base-256 base-320 s4-256
    python benchmarks/ablation_patchcore.py --data ../shared/data/mvtec:bottle --settings base-256 pad-256

A *setting* is data: ``Setting(method, params, preprocessing)``; ``params`` are detector hyperparameters
(on top of the method's paper defaults and of ``COMMON[method]``), ``preprocessing`` the keyword arguments
of ``flawmap.data.preprocessing`` (resize, crop, aspect; unset = the paper's). Add settings by adding
entries to :data:`SETTINGS` (or ``SETTINGS.update(...)`` from another script before ``main()``); nothing
else changes. ``--param KEY=VALUE`` overrides a hyperparameter in every setting whose method has it.

Each run goes through the benchmark pipeline (``flawmap.bench.runner.run_one``: the same loading,
fit, predict and metrics as ``flawmap bench``), without a feature cache (honest times). Categories are the
outer loop and settings the inner one, so the settings of a category run under about the same machine load
(recorded per row: the 1-minute load average before the run). Rows are appended to ``--out`` as they finish
(rows already there are skipped: a killed run resumes). ``pad_max`` (letterboxed settings only): the share
of test images whose map maximum, i.e. the image score's pixel, lies in the padding (0: the padding never
drives a score). The tables are printed with the command that made them.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from flawmap.bench.runner import RunSpec, SplitCache, run_one
from flawmap.data import list_categories, resolve_data_root
from flawmap.params import parse_params
from flawmap.presets import ACCURATE, get_preset, preset_params
from flawmap.registry import detector_class


@dataclass(frozen=True)
class Setting:
    params: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    method: str = "patchcore"
    note: str = ""


#: hyperparameters every setting of a method gets unless it sets them itself (1% coreset: the fidelity setting)
COMMON: dict[str, dict[str, Any]] = {"patchcore": {"coreset_ratio": 0.01}}
NO_CROP = {"crop": 0}
LITE2_S4 = ("blocks.1", "blocks.2", "blocks.4")  # efficientnet_lite2 stages at strides 4, 8, 16
L0L2MN = ("efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2")
SETTINGS: dict[str, Setting] = {
    "paper": Setting({}, {}, note="paper preprocessing (256 -> crop 224)"),
    **{f"base-{r}": Setting({}, {"resize": r, **NO_CROP}) for r in (256, 320, 384)},
    **{f"s4-{r}": Setting({"layers": LITE2_S4}, {"resize": r, **NO_CROP}, note="+ stride-4 stage") for r in (256, 320, 384)},
    **{f"emb{d}-256": Setting({"embedding_dim": d}, {"resize": 256, **NO_CROP}) for d in (32, 64, 128)},
    "imagenet-256": Setting({"normalization": "imagenet"}, {"resize": 256, **NO_CROP}),
    **{f"pad-{r}": Setting({}, {"resize": r, **NO_CROP, "aspect": "pad"}, note="letterbox") for r in (256, 384, 512)},
    # rotation coverage / test-time rotations / backbone ensembles
    **{f"rot-train{r}-256": Setting({"train_rotations": r}, {"resize": 256, **NO_CROP},
                                    note=f"bank also at {r} more orientations") for r in (3, 7)},
    "rot-test3-256": Setting({"test_rotations": 3}, {"resize": 256, **NO_CROP}, note="min over 4 orientations"),
    "mn-256": Setting({"backbone": "mobilenet_v2"}, {"resize": 256, **NO_CROP}),
    "ens-l0l2mn-256": Setting({"backbone": L0L2MN}, {"resize": 256, **NO_CROP}, note="concatenated, one bank"),
    "scores-l0l2mn-256": Setting({"backbone": L0L2MN, "ensemble": "scores"}, {"resize": 256, **NO_CROP},
                                 note="a bank per backbone, standardised scores averaged"),
    "scores-l0l2mn-test3-256": Setting({"backbone": L0L2MN, "ensemble": "scores", "test_rotations": 3},
                                       {"resize": 256, **NO_CROP}),
    "scores-l0l2-test3-256": Setting({"backbone": L0L2MN[:2], "ensemble": "scores", "test_rotations": 3},
                                     {"resize": 256, **NO_CROP}, note="installed backbones only"),
    "rot-train3-test3-256": Setting({"train_rotations": 3, "test_rotations": 3}, {"resize": 256, **NO_CROP}),
    "scores-l0l2mn-train3-256": Setting({"backbone": L0L2MN, "ensemble": "scores", "train_rotations": 3},
                                        {"resize": 256, **NO_CROP}),
    "rot-train7-test3-256": Setting({"train_rotations": 7, "test_rotations": 3}, {"resize": 256, **NO_CROP}),
    "s4-rot-train3-256": Setting({"layers": LITE2_S4, "train_rotations": 3}, {"resize": 256, **NO_CROP}),
    "s4-rot-train3-test3-256": Setting({"layers": LITE2_S4, "train_rotations": 3, "test_rotations": 3},
                                       {"resize": 256, **NO_CROP}),
    "s4-rot-test3-256": Setting({"layers": LITE2_S4, "test_rotations": 3}, {"resize": 256, **NO_CROP}),
    "rot-train3-pad-256": Setting({"train_rotations": 3}, {"resize": 256, **NO_CROP, "aspect": "pad"}),
    "scores-l0l2mn-train3-pad-256": Setting({"backbone": L0L2MN, "ensemble": "scores", "train_rotations": 3},
                                            {"resize": 256, **NO_CROP, "aspect": "pad"}),
    # the shipped preset itself (flawmap.presets), so its row always measures what `--preset accurate` runs
    "accurate": Setting(preset_params(ACCURATE, "patchcore"), get_preset(ACCURATE).preprocessing_for("patchcore"),
                        note="= s4-rot-train3-256"),
    "padim-256": Setting({}, {"resize": 256, **NO_CROP}, method="padim"),
    "padim-pad-256": Setting({}, {"resize": 256, **NO_CROP, "aspect": "pad"}, method="padim"),
    "padim-pad-384": Setting({}, {"resize": 384, **NO_CROP, "aspect": "pad"}, method="padim"),
}
FIELDS = ["dataset", "category", "setting", "method", "image_auroc", "pixel_auroc", "aupro", "fit_s", "ms_per_image",
          "pad_max", "n_train", "n_test", "input", "load1"]
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def spec_for(setting: Setting, root: Path, category: str, overrides: dict[str, Any], max_train: int | None) -> RunSpec:
    allowed = detector_class(setting.method).param_names()
    params = {**COMMON.get(setting.method, {}), **setting.params,
              **{k: v for k, v in overrides.items() if k in allowed}}
    pre = setting.preprocessing
    return RunSpec(setting.method, category, str(root), params, pre.get("resize"), pre.get("crop"), max_train,
                   aspect=pre.get("aspect"))


def pad_max_share(spec: RunSpec, paths: list[Path], maps: np.ndarray) -> float | None:
    """Share of images whose map maximum lies outside the image content (letterbox padding); None: no padding."""
    tf = spec.transform()
    if tf.aspect != "pad" or tf.crop is not None:
        return None
    outside = 0
    for p, m in zip(paths, maps):
        with Image.open(p) as im:
            top, left, h, w = tf.content_box(im.height, im.width)
        i, j = np.unravel_index(int(np.argmax(m)), m.shape)
        outside += not (top <= i < top + h and left <= j < left + w)
    return outside / len(paths)


def parse_data(items: list[str]) -> list[tuple[str, Path, list[str]]]:
    """['synthetic-hard', 'ROOT:cat1,cat2'] -> [(label, root, categories)]."""
    out = []
    for item in items:
        name, _, cats = item.partition(":")
        root = resolve_data_root(name)
        out.append((Path(name).name, root, [c for c in cats.split(",") if c] or list_categories(root)))
    return out


def fmt(v: Any, nd: int = 3) -> str:
    if v is None or v == "":
        return "-"
    return f"{float(v):.{nd}f}"


def tables(rows: list[dict[str, Any]], settings: list[str]) -> str:
    """Markdown: per dataset, one row per (setting, category) and the mean over categories per setting."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == ds and r["setting"] in settings]
        out.append(f"\n**{ds}**\n\n| setting | category | input | image AUROC | pixel AUROC | AUPRO | fit s | ms/img "
                   "| pad max | load |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(rs, key=lambda r: (settings.index(r["setting"]), r["category"])):
            out.append(f"| {r['setting']} | {r['category']} | {r['input']} | {fmt(r['image_auroc'])} | "
                       f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {fmt(r['fit_s'], 1)} | {fmt(r['ms_per_image'], 0)} | "
                       f"{fmt(r['pad_max'], 2)} | {fmt(r['load1'], 1)} |")
        cats = sorted({r["category"] for r in rs})
        if len(cats) > 1:
            out.append(f"\nmean over {len(cats)} categories ({', '.join(cats)}):\n\n| setting | image AUROC | pixel AUROC "
                       "| AUPRO | fit s | ms/img |\n|---|---|---|---|---|---|")
            for s in settings:
                g = [r for r in rs if r["setting"] == s]
                if len(g) == len(cats):
                    mean = {k: np.mean([float(r[k]) for r in g]) if all(r[k] not in (None, "") for r in g) else None
                            for k in (*METRICS, "fit_s", "ms_per_image")}
                    out.append(f"| {s} | {fmt(mean['image_auroc'])} | {fmt(mean['pixel_auroc'])} | {fmt(mean['aupro'])} | "
                               f"{fmt(mean['fit_s'], 1)} | {fmt(mean['ms_per_image'], 0)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", default=None, metavar="ROOT[:CATS]",
                    help="MVTec-layout root or an embedded dataset (synthetic, synthetic-hard), optionally with "
                         "comma-separated categories; repeatable (default: synthetic-hard)")
    ap.add_argument("--settings", nargs="+", default=["base-256"], choices=list(SETTINGS))
    ap.add_argument("--param", action="append", metavar="KEY=VALUE", help="hyperparameter for every setting whose "
                    "method has it (e.g. coreset_ratio=0.1), repeatable")
    ap.add_argument("--max-train", type=int, default=None, help="first N training images only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="benchmarks/results/ablation_patchcore.csv")
    ap.add_argument("--list", action="store_true", help="list the settings and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, s in SETTINGS.items():
            print(f"{name:16s} {s.method:10s} params={s.params} preprocessing={s.preprocessing} {s.note}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_params(args.param)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if out.is_file():
        with out.open() as f:
            rows = list(csv.DictReader(f))
    done = {(r["dataset"], r["category"], r["setting"]) for r in rows}
    splits = SplitCache()
    for label, root, cats in parse_data(args.data or ["synthetic-hard"]):
        for cat in cats:
            for name in args.settings:
                if (label, cat, name) in done:
                    continue
                setting = SETTINGS[name]
                spec = spec_for(setting, root, cat, overrides, args.max_train)
                load1 = os.getloadavg()[0]
                row, res, test = run_one(spec, splits)
                h, w = spec.transform().output_size
                rec = {"dataset": label, "category": cat, "setting": name, "method": setting.method,
                       **{k: row[k] for k in METRICS}, "fit_s": round(row["fit_seconds"], 2),
                       "ms_per_image": round(1000 * row["predict_seconds_per_image"], 1),
                       "pad_max": pad_max_share(spec, list(test.paths), res.maps), "n_train": row["n_train"],
                       "n_test": row["n_test"], "input": f"{h}x{w}", "load1": round(load1, 2)}
                rows.append(rec)
                new = not out.is_file()
                with out.open("a", newline="") as f:
                    wr = csv.DictWriter(f, fieldnames=FIELDS)
                    if new:
                        wr.writeheader()
                    wr.writerow(rec)
                print(", ".join(f"{k}={v}" for k, v in rec.items()), flush=True)
    print(f"\n`{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}`")
    print(tables(rows, args.settings))


if __name__ == "__main__":
    main()
