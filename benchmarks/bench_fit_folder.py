"""Memory and time of `flawmap fit --train DIR` on N large images: the loader keeps only the transformed
uint8 pixels (3 x 224 x 224 = 150 KB per image), never the full-resolution decodes.

    python benchmarks/bench_fit_folder.py --n 2000 --size 1024 --method patchcore

Writes N synthetic size x size PNGs (a part-like gradient with a disc and mild sensor noise, each
shifted and lit differently) into a temporary folder, runs `flawmap fit --train` on it in a
subprocess, and prints wall seconds and the child's peak RSS (VmHWM, from getrusage of the child),
next to what holding every full-resolution decode (N x size^2 x 3 bytes) and every float input
(N x 3 x 224^2 x 4 bytes) would have cost. --keep DIR keeps the images (and reuses them next time).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> float:
    """N PNGs (size x size RGB) into folder; returns the seconds it took (skips existing files)."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        p = folder / f"part_{i:05d}.png"
        if p.exists():
            continue
        rng = np.random.default_rng([seed, i])  # image i is the same whether or not others exist
        dx, dy, light = rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.9, 1.1)
        disc = ((xx - 0.5 - dx) ** 2 + (yy - 0.5 - dy) ** 2 < 0.09).astype(np.float32)
        grey = (70 + 90 * xx + 60 * disc) * light
        img = np.stack([grey, grey * 0.95, grey * 0.9], axis=-1) + rng.normal(0, 2.0, (size, size, 1))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, compress_level=1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--param", action="append", default=[], help="passed on to `flawmap fit --param`")
    ap.add_argument("--keep", default=None, metavar="DIR", help="image folder to keep and reuse (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="flawmap-bench-fit-") as tmp:
        images = Path(args.keep) if args.keep else Path(tmp) / "good"
        gen_s = write_images(images, args.n, args.size)
        cmd = [sys.executable, "-m", "flawmap.cli", "fit", "--method", args.method, "--train", str(images),
               "--out", str(Path(tmp) / "model"), "--no-progress", *[f"--param={p}" for p in args.param]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FLAWMAP_NO_PROGRESS": "1"})
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KB
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        full_gb = args.n * args.size ** 2 * 3 / 2**30
        float_gb = args.n * 3 * 224 * 224 * 4 / 2**30
        print(f"{args.method}: {args.n} images of {args.size}x{args.size} (written in {gen_s:.0f} s): fit --train "
              f"exit {proc.returncode}, {wall:.1f} s wall, peak RSS {peak_mb:.0f} MB (all full-resolution decodes "
              f"would be {full_gb:.1f} GB, all float inputs {float_gb:.1f} GB)")
        sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
