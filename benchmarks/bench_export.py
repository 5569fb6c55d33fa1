"""ONNX export on real MVTec AD bottle: per-image latency of onnxruntime vs PyTorch (batch 1 and 8), file sizes.

    python benchmarks/bench_export.py --data ../shared/data/mvtec --category bottle

For each method: fit on the training images (paper preprocessing 256 -> 224), save the model folder as
`flawmap fit` does, export it (`deploy.export.export_model`), then time ``raw`` of both predictors
(``deploy.predictor.TorchPredictor`` and ``deploy.runtime.OnnxPredictor``) on preprocessed test images,
alternating backends per repeat so load noise hits both alike. Reports medians; threads: each
runtime's default (torch: ``torch.get_num_threads()``, onnxruntime: its intra-op default).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flawmap import get_detector
from flawmap.data import Transform, load_image, scan_category
from flawmap.deploy.export import export_model
from flawmap.deploy.predictor import TorchPredictor
from flawmap.deploy.runtime import OnnxPredictor


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def _time(fn, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/mvtec")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--methods", default="patchcore,padim")
    ap.add_argument("--max-train", type=int, default=None, help="first N training images (default: all)")
    ap.add_argument("--coreset", type=float, default=0.1, help="PatchCore coreset_ratio (default 0.1)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--work", default=None, help="folder for the models (default: a temporary folder)")
    args = ap.parse_args()
    tf = Transform(resize=256, crop=224)
    data = scan_category(args.data, args.category)
    train_files = data.train[: args.max_train]
    train = torch.from_numpy(np.stack([tf.to_array(load_image(s.path)) for s in train_files]))
    test = np.stack([tf.to_array(load_image(s.path)) for s in data.test[:8]])
    batches = [int(b) for b in args.batches.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_export_"))
    print(f"{args.category}: {len(train)} training images, 224 px, torch threads {torch.get_num_threads()}")
    rows = []
    for method in args.methods.split(","):
        params = {"coreset_ratio": args.coreset} if method == "patchcore" else {}
        t0 = time.perf_counter()
        det = get_detector(method, **params).fit(train)
        fit_s = time.perf_counter() - t0
        folder = det.save(work / method, extra={"transform": tf.to_dict()})
        t0 = time.perf_counter()
        onnx_path = export_model(folder, work / f"{method}.onnx", overwrite=True)
        export_s = time.perf_counter() - t0
        pt, ox = TorchPredictor(folder, device="cpu"), OnnxPredictor(onnx_path)
        for b in batches:
            x = test[:b]
            for _ in range(2):  # warm-up (lazy init, caches)
                pt.raw(x), ox.raw(x)
            t_pt, t_ox = [], []
            for _ in range(args.repeats):
                t_pt.append(_time(pt.raw, x))
                t_ox.append(_time(ox.raw, x))
            ms_pt, ms_ox = 1e3 * statistics.median(t_pt) / b, 1e3 * statistics.median(t_ox) / b
            rows.append((method, b, ms_pt, ms_ox, _size_mb(folder), _size_mb(onnx_path), fit_s, export_s))
            print(f"{method} batch {b}: torch {ms_pt:.1f} ms/img, onnxruntime {ms_ox:.1f} ms/img "
                  f"(x{ms_pt / ms_ox:.2f})", flush=True)
    print("\n| method | batch | PyTorch ms/image | onnxruntime ms/image | speed-up | model folder MB | .onnx MB |"
          " fit s | export s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, b, a, o, sf, so, fs, es in rows:
        print(f"| {m} | {b} | {a:.1f} | {o:.1f} | {a / o:.2f}x | {sf:.1f} | {so:.1f} | {fs:.0f} | {es:.1f} |")


if __name__ == "__main__":
    main()
