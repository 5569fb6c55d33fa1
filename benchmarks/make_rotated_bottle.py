"""A label-preserving hard copy of a real MVTec AD category: every image rotated and shifted at random.

    python benchmarks/make_rotated_bottle.py --src ../shared/data/mvtec/bottle --out DIR --seed 0
    flawmap bench --data DIR --categories bottle

Each train and test image is rotated about its centre by an angle drawn uniformly from [0, 360) degrees,
scaled by a factor drawn uniformly from [1 - zoom, 1 + zoom] (``--zoom``, default 0.15) and shifted by a
vector drawn uniformly from a disc of radius ``--shift`` x the image side (default 0.1: 90 px on bottle's
900 px). Its ground-truth mask gets the same transform with nearest-neighbour resampling, so the labels
stay exact. The uncovered corners and the side the shift exposes are filled with the image's background
colour (the median of its border pixels; the mask's with 0). Bottle is round and photographed from above,
so a rotation alone leaves it nearly the same picture; the shift and zoom move it off centre and change
its size, and since it fills ~90% of the frame, a zoom above 1 or a shift crops part of its rim, which a
detector trained on centred bottles of one size has not seen. A defective image whose transform would
push more than 10% of its mask out of the frame is drawn again (from the same seeded stream), so no
defect is lost.

The result is written in the MVTec layout at ``DIR/<category>`` (``bottle``), with the licence file of
the source and ``.flawmap-rotated.json`` (parameters and the angle and shift of every file), built in a
temporary folder and renamed into place at the end. The same source, seed and options give the same
bytes. Default DIR: ``$FLAWMAP_DATA_HOME/rotated-<category>-seed<N>`` or
``~/.cache/flawmap/rotated-<category>-seed<N>``, outside the repository (MVTec AD is CC BY-NC-SA 4.0 and
is never copied into it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from flawmap.data import scan_category
from flawmap.io import atomic_create_dir

MARKER = ".flawmap-rotated.json"
#: a defective image is re-drawn when its transformed mask keeps less than this share of the defect's pixels
MIN_KEPT = 0.9
_ATTEMPTS = 50


def default_out(category: str, seed: int) -> Path:
    home = os.environ.get("FLAWMAP_DATA_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "flawmap") / f"rotated-{category}-seed{seed}"


def _fill(img: Image.Image) -> tuple[int, ...] | int:
    """The background colour: the per-channel median of the border pixels."""
    a = np.asarray(img)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).reshape(-1, 1 if a.ndim == 2 else a.shape[2])
    med = np.median(border, axis=0).round().astype(int)
    return int(med[0]) if a.ndim == 2 else tuple(int(v) for v in med)


def _move(img: Image.Image, angle: float, scale: float, shift: tuple[float, float], resample: Image.Resampling,
          fill: tuple[int, ...] | int) -> Image.Image:
    """Rotate counter-clockwise by ``angle`` degrees and scale by ``scale`` about the centre c, then translate
    by ``shift`` (x, y) px: output q shows the source at c + R(-angle) (q - c - shift) / scale."""
    a = math.radians(angle)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    cx, cy = img.size[0] / 2, img.size[1] / 2
    tx, ty = cx + shift[0], cy + shift[1]
    # source x = cos (x - tx) - sin (y - ty) + cx, source y = sin (x - tx) + cos (y - ty) + cy (y axis down)
    data = (cos, -sin, cx - cos * tx + sin * ty, sin, cos, cy - sin * tx - cos * ty)
    return img.transform(img.size, Image.Transform.AFFINE, data, resample=resample, fillcolor=fill)


def _draw(rng: np.random.Generator, side: int, max_shift: float, zoom: float) -> tuple[float, float, tuple[float, float]]:
    angle = float(rng.uniform(0.0, 360.0))
    scale = float(rng.uniform(1.0 - zoom, 1.0 + zoom))
    r, phi = max_shift * side * math.sqrt(rng.uniform()), rng.uniform(0.0, 2 * math.pi)
    return round(angle, 4), round(scale, 4), (round(r * math.cos(phi), 3), round(r * math.sin(phi), 3))


def transform_file(src: Path, dst: Path, key: str, seed: int, max_shift: float, zoom: float,
                   mask_src: Path | None = None, mask_dst: Path | None = None) -> dict[str, object]:
    """Write the rotated and shifted image (and mask) of one file; return its transform."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])  # one stream per file (relative path)
    with Image.open(src) as im:
        img = im.copy()
    mask = None
    if mask_src is not None:
        with Image.open(mask_src) as m:
            mask = m.convert("L")
        area = int((np.asarray(mask) > 0).sum())
    redrawn = 0
    while True:  # after _ATTEMPTS re-draws: rotation only, which keeps what lies inside the inscribed circle
        last = redrawn >= _ATTEMPTS
        angle, scale, shift = _draw(rng, max(img.size), 0.0 if last else max_shift, 0.0 if last else zoom)
        if mask is None:
            break
        moved = _move(mask, angle, scale, shift, Image.Resampling.NEAREST, 0)
        if area == 0 or (np.asarray(moved) > 0).sum() >= MIN_KEPT * area * scale ** 2 or last:
            break
        redrawn += 1
    out = _move(img, angle, scale, shift, Image.Resampling.BILINEAR, _fill(img))
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, format="PNG", compress_level=1)
    if mask is not None and mask_dst is not None:
        mask_dst.parent.mkdir(parents=True, exist_ok=True)
        moved.save(mask_dst, format="PNG", compress_level=1)
    return {"file": key, "angle_deg": angle, "scale": scale, "shift_xy_px": list(shift), "redrawn": redrawn}


def make_rotated(src: Path, out: Path, seed: int = 0, max_shift: float = 0.1, zoom: float = 0.15,
                 workers: int = 2) -> Path:
    """Write the rotated copy of the category folder ``src`` at ``out/<src.name>``; return that folder."""
    data = scan_category(src.parent, src.name)
    target = out / src.name
    params = {"source": str(src.resolve()), "seed": seed, "max_shift": max_shift, "zoom": zoom, "min_kept": MIN_KEPT}
    if (target / MARKER).is_file():
        old = json.loads((target / MARKER).read_text())
        if {k: old.get(k) for k in params} == params:
            return target
        raise SystemExit(f"{target} holds a rotated copy made with other parameters ({ {k: old.get(k) for k in params} }); "
                         "remove it or choose another --out")
    if target.exists():
        raise SystemExit(f"refusing to overwrite {target}: it exists and is not a rotated copy; choose another --out")

    def build(tmp: Path) -> None:
        jobs = []
        for smp in (*data.train, *data.test):
            rel = smp.path.relative_to(data.path)
            mrel = smp.mask_path.relative_to(data.path) if smp.mask_path is not None else None
            jobs.append((smp.path, tmp / rel, rel.as_posix(), smp.mask_path, None if mrel is None else tmp / mrel))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(lambda j: transform_file(j[0], j[1], j[2], seed, max_shift, zoom, j[3], j[4]), jobs))
        for extra in ("license.txt", "readme.txt"):
            if (data.path / extra).is_file():
                shutil.copyfile(data.path / extra, tmp / extra)
        (tmp / MARKER).write_text(json.dumps({**params, "files": done}, indent=1) + "\n")

    if not atomic_create_dir(target, build) and not (target / MARKER).is_file():
        raise SystemExit(f"{target} appeared while writing and is not a rotated copy")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="../shared/data/mvtec/bottle", help="an MVTec category folder")
    ap.add_argument("--out", default=None, help="dataset root to write <out>/<category> in (default: "
                    "$FLAWMAP_DATA_HOME or ~/.cache/flawmap, /rotated-<category>-seed<N>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift", type=float, default=0.1, help="largest shift as a fraction of the image side (default 0.1)")
    ap.add_argument("--zoom", type=float, default=0.15, help="scale drawn from [1 - zoom, 1 + zoom] (default 0.15; 0 = none)")
    ap.add_argument("--workers", type=int, default=2, help="threads (default 2)")
    args = ap.parse_args(argv)
    src = Path(args.src)
    if not (src / "train" / "good").is_dir():
        print(f"make_rotated_bottle: {src} is not an MVTec category folder (no train/good)", file=sys.stderr)
        return 2
    if not 0.0 <= args.shift < 0.5 or not 0.0 <= args.zoom < 0.5:
        print(f"make_rotated_bottle: --shift and --zoom must be in [0, 0.5); got {args.shift}, {args.zoom}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_out(src.name, args.seed)
    t0 = time.perf_counter()
    target = make_rotated(src, out, args.seed, args.shift, args.zoom, args.workers)
    print(f"{target} ready ({time.perf_counter() - t0:.1f} s); run: flawmap bench --data {out} --categories {src.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
