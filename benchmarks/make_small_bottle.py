"""A down-scaled copy of one MVTec AD category (MVTec layout, PNG) small enough to travel with the source tree.

    python benchmarks/make_small_bottle.py --src ../shared/data/mvtec/bottle --out gpu_payload/bottle_small --size 256

Every train/test image is resized to SIZE x SIZE (bicubic, antialiased), every ground-truth mask with
nearest neighbour (binary stays binary); names and folders are kept, so ``flawmap.data.scan_category``
reads the copy like the original (root = the parent of --out, category = its name). The licence file is
copied along (CC BY-NC-SA 4.0, (c) MVTec Software GmbH). Keep the copy out of git (``gpu_payload/`` is
listed in .git/info/exclude, see docs/development.md, "GPU check"). Prints the total size; above --max-mb it exits
with an error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

from flawmap.data import load_image, load_mask, scan_category
from flawmap.io import atomic_replace_dir, check_replaceable


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def make(src: Path, out: Path, size: int) -> int:
    """Write the copy (replaced as a whole); returns its size in bytes."""
    data = scan_category(src.parent, src.name)

    def build(tmp: Path) -> None:
        for s in (*data.train, *data.test):
            rel = s.path.relative_to(src).with_suffix(".png")
            _save(Image.fromarray(load_image(s.path)).resize((size, size), Image.Resampling.BICUBIC), tmp / rel)
            if s.mask_path is not None:
                mask = Image.fromarray((load_mask(s.mask_path) > 0).astype("uint8") * 255)
                _save(mask.resize((size, size), Image.Resampling.NEAREST),
                      tmp / s.mask_path.relative_to(src).with_suffix(".png"))
        for extra in ("license.txt", "readme.txt"):
            if (src / extra).is_file():
                shutil.copy(src / extra, tmp / extra)

    atomic_replace_dir(out, build)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("../shared/data/mvtec/bottle"), help="category folder")
    ap.add_argument("--out", type=Path, default=Path("gpu_payload/bottle_small"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--max-mb", type=float, default=30.0)
    a = ap.parse_args(argv)
    check_replaceable(a.out, lambda p: (p / "train" / "good").is_dir(), "category copy")
    n = make(a.src.resolve(), a.out, a.size)
    print(f"{a.out}: {n / 2**20:.1f} MB ({a.size} px)")
    if n > a.max_mb * 2**20:
        print(f"{a.out} is above --max-mb {a.max_mb:g}: use a smaller --size", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
