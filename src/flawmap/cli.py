"""Command line: flawmap fit | predict | test | bench | list."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from . import __version__

log = logging.getLogger("flawmap")


# ---- helpers ------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    v = yaml.safe_load(text)
    return tuple(v) if isinstance(v, list) else v


def parse_params(items: Sequence[str] | None, what: str = "--param") -> dict[str, Any]:
    """['k=v', ...] -> {k: v} with YAML scalars/lists ('0.1' -> 0.1, '[layer2,layer3]' -> tuple)."""
    from .errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} expects KEY=VALUE; got {item!r}")
        out[key.strip()] = _parse_value(val)
    return out


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="MVTec-layout root folder (<root>/<category>/train/good, test/, ground_truth/)")
    p.add_argument("--resize", type=int, default=None, help="resize images to this size (default: the method's paper setting)")
    p.add_argument("--crop", type=int, default=None, help="center crop after resize (default: the method's paper setting; 0 = no crop)")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="detector hyperparameter, repeatable (e.g. --param coreset_ratio=0.01 --param layers=[layer2,layer3]); "
                        "see `flawmap list --params METHOD`")
    p.add_argument("--device", default=None, help="auto (default: CUDA when present), cpu or cuda[:N]")


def _transform(method: str, resize: int | None, crop: int | None):
    from .data import Transform
    from .registry import detector_class

    paper = detector_class(method).paper_transform
    if resize is None and crop is None:
        return Transform(resize=paper["resize"], crop=paper["crop"])
    return Transform(resize=resize or paper["resize"], crop=(crop or None) if crop is not None else paper["crop"])


# ---- commands -----------------------------------------------------------------------------------
def cmd_fit(args: argparse.Namespace) -> int:
    from .data import load_split, scan_category
    from .metrics.thresholds import threshold_from_good
    from .registry import get_detector

    params = parse_params(args.param)
    if args.device:
        params["device"] = args.device
    det = get_detector(args.method, **params)
    tf = _transform(args.method, args.resize, args.crop)
    data = scan_category(args.data, args.category)
    train = load_split(data, "train", tf)
    t0 = time.perf_counter()
    det.fit(train.images)
    fit_s = time.perf_counter() - t0
    # display scale and a default threshold from (in-sample) training images; documented as such
    ref = det.predict(train.images[: args.calibration_images])
    extra = {
        "transform": tf.to_dict(),
        "category": args.category,
        "data": str(args.data),
        "fit_seconds": round(fit_s, 3),
        "map_range": [float(np.percentile(ref.maps, 1)), float(np.percentile(ref.maps, 99.9) * 2)],
        "threshold": threshold_from_good(ref.maps.max(axis=(1, 2)), 0.99) if len(ref) > 1 else float(ref.maps.max()),
        "calibration": f"{len(ref)} training images (in-sample)",
    }
    path = det.save(args.out, extra=extra)
    print(f"fitted {args.method} on {args.category} ({len(train)} images) in {fit_s:.1f} s -> {path}")
    return 0


def _collect_images(inputs: Sequence[str]) -> list[Path]:
    from .data import IMAGE_SUFFIXES
    from .errors import DataError

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
            if not found:
                raise DataError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .base import load_detector, read_model_config
    from .data import Transform, load_image
    from .progress import progress
    from .viz.heatmap import panel, save_png, to_uint8_image

    cfg = read_model_config(args.model)
    extra = cfg.get("extra", {})
    det = load_detector(args.model, device=args.device)
    tf = Transform.from_dict(extra.get("transform", {"resize": 256, "crop": None}))
    files = _collect_images(args.inputs)
    vmin, vmax = extra.get("map_range", [None, None])
    threshold = args.threshold if args.threshold is not None else extra.get("threshold")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in progress(range(0, len(files), args.batch_size), desc="predict", total=-(-len(files) // args.batch_size)):
        batch = files[i:i + args.batch_size]
        x = torch.stack([tf(load_image(f)) for f in batch])
        res = det.predict(x)
        for f, img, s, m in zip(batch, x.numpy(), res.scores, res.maps):
            lo = float(m.min()) if vmin is None else vmin
            hi = float(m.max()) if vmax is None else vmax
            name = f"{len(rows):04d}_{f.stem}_overlay.png"
            save_png(panel(to_uint8_image(img), m, lo, hi, threshold), out / name)
            rows.append({"path": str(f), "score": float(s), "max_pixel": float(m.max()),
                         "anomalous": None if threshold is None else bool(m.max() >= threshold), "overlay": name})
    with open(out / "scores.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        flag = "" if r["anomalous"] is None else ("  ANOMALOUS" if r["anomalous"] else "  ok")
        print(f"{r['score']:10.4f}{flag}  {r['path']}")
    print(f"{len(rows)} images -> {out / 'scores.csv'} and overlay PNGs in {out}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .base import load_detector, read_model_config
    from .bench.runner import format_table
    from .data import Transform, load_split, scan_category
    from .metrics import evaluate

    cfg = read_model_config(args.model)
    det = load_detector(args.model, device=args.device)
    tf = Transform.from_dict(cfg.get("extra", {}).get("transform", {"resize": 256, "crop": None}))
    test = load_split(scan_category(args.data, args.category), "test", tf)
    t0 = time.perf_counter()
    res = det.predict(test.images)
    row = {"method": cfg["detector"], "category": args.category, "backbone": cfg["params"].get("backbone"),
           **evaluate(test.labels, res.scores, test.masks, res.maps),
           "predict_seconds_per_image": (time.perf_counter() - t0) / len(test)}
    print(format_table([row], ("method", "category", "backbone", "image_auroc", "pixel_auroc", "aupro", "image_f1",
                               "pixel_f1", "predict_seconds_per_image")))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.config import BenchConfig, MethodConfig, check_method, load_config
    from .bench.runner import FIRST_COLUMNS, SplitCache, format_table, run_one
    from .bench.store import ResultStore, write_csv
    from .data import ensure_synthetic_dataset
    from .registry import detector_class

    cfg = load_config(args.config) if args.config else BenchConfig()
    if args.methods:
        names = [m for m in args.methods.split(",") if m]
        for m in names:
            check_method(m)
        cfg.methods = {m: cfg.methods.get(m, MethodConfig()) for m in names}
    fixed = parse_params(args.param)
    grid = {k: list(v) if isinstance(v, tuple) else [v] for k, v in parse_params(args.grid, "--grid").items()}
    for name, mc in cfg.methods.items():
        allowed = detector_class(name).param_names()
        for key, value in {**fixed, **grid}.items():
            method, _, pname = key.rpartition(".")
            if method and method != name:
                continue
            if pname not in allowed:
                if method:
                    from .errors import ConfigError
                    raise ConfigError(f"{name}: unknown parameter {pname!r}; allowed: {', '.join(allowed)}")
                continue  # an unscoped key only applies to methods that have it
            (mc.grid if key in grid else mc.params)[pname] = value
        if args.device:
            mc.params["device"] = args.device
    for attr in ("data", "resize", "crop", "max_train", "out"):
        v = getattr(args, attr)
        if v is not None:
            setattr(cfg, attr, v)
    if args.categories:
        cfg.categories = [c for c in args.categories.split(",") if c]
    if cfg.crop == 0:
        cfg.crop = None
    data_root = cfg.data or str(ensure_synthetic_dataset())
    if cfg.data is None:
        print(f"no --data given: using the embedded synthetic MVTec-layout dataset at {data_root}")
    specs = cfg.expand(data_root)
    out = Path(cfg.out)
    store = ResultStore(out / "results.sqlite")
    done = store.done_keys()
    todo = [s for s in specs if s.key() not in done]
    print(f"{len(specs)} runs ({len(specs) - len(todo)} already finished in {store.path}); results -> {out}")
    splits = SplitCache()
    for i, spec in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {spec.method} on {spec.category} {dict(spec.params) or ''}", flush=True)
        row, _, _ = run_one(spec, splits)
        store.add(spec.key(), row)
    keys = {s.key() for s in specs}
    rows = [r for r in store.rows() if r.get("run_key") in keys]
    csv_path = write_csv(rows, out / "results.csv", FIRST_COLUMNS)
    print(format_table(rows))
    print(f"\nresults table: {csv_path}  (all runs of this store: {store.path})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .components.backbones import list_backbones
    from .registry import detector_class, list_detectors

    if args.params:
        cls = detector_class(args.params)
        print(f"{args.params} hyperparameters (defaults):")
        for k, v in cls.default_params().items():
            print(f"  {k} = {v!r}")
        print(f"  paper preprocessing: {cls.paper_transform}")
        return 0
    print("methods:   " + ", ".join(list_detectors()))
    print("backbones: " + ", ".join(list_backbones()))
    return 0


# ---- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flawmap", description="Unsupervised visual anomaly detection and segmentation.")
    ap.add_argument("--version", action="version", version=f"flawmap {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    ap.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="fit a detector on a category's good training images and save it")
    p.add_argument("--method", default="patchcore", help="detector name (default: patchcore; see `flawmap list`)")
    _add_data_args(p, required=True)
    p.add_argument("--category", required=True, help="category folder under --data")
    p.add_argument("--out", required=True, help="model folder to write (config.json + model.safetensors)")
    p.add_argument("--calibration-images", type=int, default=16,
                   help="training images scored after fit to set the overlay colour scale and default threshold (default 16)")
    _add_method_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="score images with a saved model; write scores.csv and overlay PNGs")
    p.add_argument("model", help="model folder written by `flawmap fit`")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", default="heatmaps", help="output folder (default: heatmaps)")
    p.add_argument("--threshold", type=float, default=None, help="pixel threshold for the contour and the anomalous flag "
                   "(default: the one stored at fit, from training images)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: as saved)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("test", help="evaluate a saved model on a category's test split")
    p.add_argument("model", help="model folder written by `flawmap fit`")
    p.add_argument("--data", required=True, help="MVTec-layout root folder")
    p.add_argument("--category", required=True, help="category folder under --data")
    p.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: as saved)")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("bench", help="fit + evaluate methods on categories; one results row per run")
    p.add_argument("config", nargs="?", help="optional YAML config (keys: data, categories, methods{name: {params, grid}}, "
                   "resize, crop, seeds, max_train, out); flags override it")
    p.add_argument("--data", default=None, help="MVTec-layout root (default: the embedded synthetic dataset, no download)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all under --data)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: patchcore)")
    p.add_argument("--grid", action="append", metavar="KEY=[V1,V2]",
                   help="sweep a hyperparameter over values, repeatable (cartesian product); KEY may be METHOD.KEY")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="fixed hyperparameter for every method that has it, repeatable; KEY may be METHOD.KEY")
    p.add_argument("--resize", type=int, default=None, help="resize size (default: each method's paper setting)")
    p.add_argument("--crop", type=int, default=None, help="center crop (default: paper setting; 0 = none)")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images (quick runs)")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda[:N]")
    p.add_argument("--out", default=None, help="output folder for results.sqlite and results.csv (default: results)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("list", help="list methods and backbones, or a method's hyperparameters")
    p.add_argument("--params", metavar="METHOD", default=None, help="show METHOD's hyperparameters and defaults")
    p.set_defaults(func=cmd_list)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import FlawmapError
    from .progress import set_progress

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    set_progress(False if args.no_progress else True)
    try:
        return int(args.func(args) or 0)
    except FlawmapError as exc:
        print(f"flawmap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
