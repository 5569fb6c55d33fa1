"""Memory and time of PatchCore's coreset and whole fit at growing training-set sizes (issue: OOM at 763 images).

Every measurement runs in its own subprocess, so each peak RSS (ru_maxrss) belongs to that run alone.

    # the issue's repro: i.i.d. Gaussian vectors (no structure), 168-d, d* = 128
    python benchmarks/bench_coreset_memory.py coreset --bank random --n 100000 300000 600000 --ratios 0.1 --modes exact approx
    # bottle with flips and a 90-degree rotation (836 images, 655k patches at 224 px) and low-structure textures
    python benchmarks/bench_coreset_memory.py coreset --bank bottle --ratios 0.01 0.1 --modes exact approx
    python benchmarks/bench_coreset_memory.py coreset --bank textures --images 200 800 2000 --ratios 0.01 0.1
    # a whole PatchCore fit (uint8 images in memory, efficientnet_lite2 at 224 px): peak RSS and seconds
    python benchmarks/bench_coreset_memory.py fit --images 1000 5000 --ratios 0.1

Banks are cached as .npy files under --cache (default /tmp/flawmap-bench-banks) with the backbone seconds
that made them. Output: one line per run (seconds, peak RSS MB, k, coverage radius), appended as JSON to
--out (default results/bench_coreset_memory.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()


def textures(n: int, size: int = 224, seed: int = 0, chunk: int = 64) -> np.ndarray:
    """n low-structure texture images (N, 3, size, size) uint8: blurred noise, one random tint and
    grain scale per image (near-stationary: CNN patches without clusters)."""
    out = np.empty((n, 3, size, size), np.uint8)
    g = torch.Generator().manual_seed(seed)
    for s in range(0, n, chunk):
        b = min(chunk, n - s)
        noise = torch.rand(b, 3, size, size, generator=g)
        k = int(torch.randint(1, 4, (1,), generator=g)) * 2 + 1
        img = torch.nn.functional.avg_pool2d(noise, k, stride=1, padding=k // 2, count_include_pad=False)
        tint = torch.rand(b, 3, 1, 1, generator=g) * 0.5 + 0.25
        img = (img - 0.5) * 0.6 + tint
        out[s:s + b] = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return out


def bottle_augmented(root: Path) -> np.ndarray:
    """bottle's train images at 256 -> crop 224 with identity, h-flip, v-flip and 90-degree rotation."""
    from flawmap.data import Transform, load_split, scan_category

    imgs = load_split(scan_category(root, "bottle"), "train", Transform(resize=256, crop=224)).images
    aug = torch.cat([imgs, imgs.flip(-1), imgs.flip(-2), imgs.rot90(1, (-2, -1))])
    return (aug * 255).round().to(torch.uint8).numpy()


def patch_bank(images: np.ndarray, backbone: str = "efficientnet_lite2") -> tuple[np.ndarray, float]:
    """PatchCore's locally aware patch features (N*h*w, D) of uint8 images, and the backbone seconds."""
    from flawmap import get_detector
    from flawmap.base import float_batch
    from flawmap.components.features import extract_features

    det = get_detector("patchcore", backbone=backbone)
    det._setup()
    x = torch.from_numpy(images)
    parts, t0 = [], time.perf_counter()
    for s in range(0, len(x), 8):
        emb = det._embed(extract_features(det._backbone, float_batch(x[s:s + 8]), batch_size=8))
        parts.append(emb.reshape(-1, emb.shape[-1]).numpy())
    return np.concatenate(parts), time.perf_counter() - t0


def load_bank(kind: str, n: int, cache: Path, data: Path) -> tuple[np.ndarray, float]:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{kind}-{n}.npy"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return np.load(path, mmap_mode="r"), json.loads(meta.read_text())["backbone_seconds"]
    if kind == "random":
        bank, secs = torch.randn(n, 168, generator=torch.Generator().manual_seed(0)).numpy(), 0.0
    elif kind == "bottle":
        bank, secs = patch_bank(bottle_augmented(data))
    elif kind == "textures":
        bank, secs = patch_bank(textures(n))
    else:
        raise SystemExit(f"unknown bank {kind!r}")
    np.save(path, bank)
    meta.write_text(json.dumps({"backbone_seconds": secs, "shape": list(bank.shape)}))
    return bank, secs


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would carry the parent's peak over fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_coreset(args: argparse.Namespace) -> dict:
    """In the subprocess: one coreset selection on a cached bank."""
    from flawmap.components import coreset as cs

    bank = torch.from_numpy(np.load(args.bank_file))  # read fully: counted in the peak like a real fit
    base = peak_rss_mb()
    t0 = time.perf_counter()
    idx = cs.greedy_coreset(bank, args.ratio, projection_dim=128, seed=0, mode=args.mode)
    secs = time.perf_counter() - t0
    peak = peak_rss_mb()
    psi = cs.random_projection(bank, 128, 0).numpy()
    out = {"n": len(bank), "ratio": args.ratio, "mode": args.mode, "k": len(idx), "seconds": secs,
           "peak_rss_mb": peak, "rss_before_mb": base}
    if args.coverage:
        out["coverage_radius"] = cs.coverage_radius(psi, idx.numpy())
    if args.naive_steps:
        x = cs._pad_pow2(psi)
        t0 = time.perf_counter()
        cs.greedy_coreset_naive(x, args.naive_steps, int(idx[0]))
        out["naive_seconds_estimate"] = (time.perf_counter() - t0) / args.naive_steps * len(idx)
    return out


def child_fit(args: argparse.Namespace) -> dict:
    """In the subprocess: a whole PatchCore fit on n uint8 texture images."""
    from flawmap import get_detector

    images = torch.from_numpy(textures(args.n_images, seed=1))
    det = get_detector("patchcore", coreset_ratio=args.ratio, coreset_mode=args.mode)
    t0 = time.perf_counter()
    det.fit(images)
    secs = time.perf_counter() - t0
    return {"images": args.n_images, "ratio": args.ratio, "mode": args.mode, "seconds": secs,
            "bank": len(det.memory_bank_), "peak_rss_mb": peak_rss_mb()}


def spawn(argv: list[str]) -> dict:
    env = dict(os.environ, FLAWMAP_NO_PROGRESS="1")
    res = subprocess.run([sys.executable, str(HERE), *argv], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}",
                "returncode": res.returncode}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["coreset", "fit", "_coreset", "_fit"])
    ap.add_argument("--bank", choices=["random", "bottle", "textures"], default="random")
    ap.add_argument("--n", type=int, nargs="+", default=[100000], help="random bank sizes")
    ap.add_argument("--images", type=int, nargs="+", default=[200], help="texture / fit image counts")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1])
    ap.add_argument("--modes", nargs="+", default=["exact"])
    ap.add_argument("--naive-steps", type=int, default=0, help="time this many textbook steps and extrapolate")
    ap.add_argument("--coverage", action="store_true", help="also the coverage radius (k-center objective)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mvtec"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/flawmap-bench-banks"))
    ap.add_argument("--out", type=Path, default=Path("results/bench_coreset_memory.jsonl"))
    # internal (subprocess) arguments
    ap.add_argument("--bank-file", type=str)
    ap.add_argument("--ratio", type=float)
    ap.add_argument("--mode", type=str)
    ap.add_argument("--n-images", type=int)
    args = ap.parse_args()
    if args.what == "_coreset":
        print(json.dumps(child_coreset(args)))
        return
    if args.what == "_fit":
        print(json.dumps(child_fit(args)))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[dict, list[str]]] = []
    if args.what == "coreset":
        sizes = args.n if args.bank == "random" else args.images if args.bank == "textures" else [836]
        for n in sizes:
            bank, secs = load_bank(args.bank, n, args.cache, args.data)
            f = str(args.cache / f"{args.bank}-{n}.npy")
            for r in args.ratios:
                for m in args.modes:
                    runs.append(({"bank": args.bank, "bank_images": n, "backbone_seconds": secs},
                                 ["_coreset", "--bank-file", f, "--ratio", str(r), "--mode", m,
                                  "--naive-steps", str(args.naive_steps)] + ["--coverage"] * args.coverage))
    else:
        for n in args.images:
            for r in args.ratios:
                for m in args.modes:
                    runs.append(({"bank": "fit-textures"}, ["_fit", "--n-images", str(n), "--ratio", str(r), "--mode", m]))
    for info, argv in runs:
        row = {**info, **spawn(argv), "load_avg": os.getloadavg()[0]}
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
