"""MVTec AD layout: scanning categories, image transforms, the Split record (loading: ``data.loading``)."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError
from .images import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

GOOD = "good"
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
_MAX_SIDE = 8192


@dataclass(frozen=True)
class Sample:
    """One image file: label 0 = good, 1 = defect; mask_path is None for good images or no ground truth."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class CategoryData:
    """The files of one category (no pixels decoded)."""

    root: Path
    category: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    has_ground_truth: bool

    @property
    def path(self) -> Path:
        """The category folder."""
        return self.root / self.category

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect type names of the test split (without "good")."""
        return sorted({s.defect_type for s in self.test if s.label == 1})

    @property
    def test_counts(self) -> dict[str, int]:
        """Number of test images per type, "good" included."""
        return dict(Counter(s.defect_type for s in self.test))

    def fingerprint(self) -> str:
        """16 hex digits identifying the category's files: relative path, size and modification time
        of every train/test image and mask. Changes when a file is added, removed, replaced or edited;
        a sweep stores it with each run and redoes the runs whose dataset changed."""
        h = hashlib.sha256(f"gt={self.has_ground_truth}\n".encode())
        for smp in (*self.train, *self.test):
            for f in (smp.path, smp.mask_path):
                if f is not None:
                    st = f.stat()
                    h.update(f"{f.relative_to(self.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a data warning once per process (a sweep scans the same category many times)."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in _IGNORED_NAMES


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _image_files(folder: Path, what: str) -> list[Path]:
    """Sorted image files of a folder (hidden files and subfolders ignored); other files or none -> DataError."""
    if not folder.is_dir():
        raise DataError(f"{what} folder not found: {folder}")
    files = [p for p in sorted(folder.iterdir()) if _visible(p) and not p.is_dir()]
    for p in files:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"non-image file {p} in {what} folder (allowed suffixes: {', '.join(IMAGE_SUFFIXES)})")
    if not files:
        raise DataError(f"{what} folder {folder} contains no images")
    return files


def _find_categories(root: Path) -> list[str]:
    return [d.name for d in _subdirs(root) if (d / "train" / GOOD).is_dir()]


def list_categories(root: str | PathLike[str]) -> list[str]:
    """Sorted names of the sub-folders of root that have a train/good folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    if not (cats := _find_categories(root)):
        found = [p.name for p in sorted(root.iterdir()) if _visible(p)]
        raise DataError(f"no categories (folders with train/good) under {root}; found: {found or 'nothing'}")
    return cats


def _find_mask(gt_dir: Path, image: Path) -> Path:
    for name in [f"{image.stem}_mask{s}" for s in IMAGE_SUFFIXES] + [f"{image.stem}{s}" for s in IMAGE_SUFFIXES]:
        if (gt_dir / name).is_file():
            return gt_dir / name
    raise DataError(f"defective test image {image} has no ground-truth mask (expected {gt_dir / (image.stem + '_mask.png')})")


def scan_category(root: str | PathLike[str], category: str) -> CategoryData:
    """Index <root>/<category>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png} (no decoding)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    cat_dir = root / category
    if not cat_dir.is_dir():
        raise DataError(f"category folder {cat_dir} not found; available categories under {root}: {_find_categories(root)}")
    train = tuple(Sample(p, 0, GOOD) for p in _image_files(cat_dir / "train" / GOOD, "train/good"))
    test_dir, gt_root = cat_dir / "test", cat_dir / "ground_truth"
    if not test_dir.is_dir():
        raise DataError(f"test folder not found: {test_dir}")
    has_gt = gt_root.is_dir()
    test: list[Sample] = []
    for sub in _subdirs(test_dir):
        files = _image_files(sub, f"test/{sub.name}")
        if sub.name == GOOD:
            test.extend(Sample(p, 0, GOOD) for p in files)
        else:
            test.extend(Sample(p, 1, sub.name, _find_mask(gt_root / sub.name, p) if has_gt else None) for p in files)
    if not test:
        raise DataError(f"test folder {test_dir} has no sub-folders with images (expected test/good, test/<defect>)")
    if has_gt:
        used = {smp.mask_path for smp in test}
        orphans = sorted(f for d in _subdirs(gt_root) for f in sorted(d.iterdir())
                         if _visible(f) and f.is_file() and f not in used)
        if orphans:
            _warn_once(f"{len(orphans)} ground-truth file(s) under {gt_root} belong to no test image and are "
                       f"ignored: {_names(orphans)}")
    if not has_gt:
        logger.info("%s has no ground_truth folder: pixel metrics will be unavailable", cat_dir)
    return CategoryData(root, category, train, tuple(test), has_gt)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _check_size(name: str, v: Any, hi: int) -> None:
    ok_int = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 1 <= x <= hi  # noqa: E731
    if ok_int(v) or (isinstance(v, (tuple, list)) and len(v) == 2 and all(ok_int(x) for x in v)):
        return
    raise ConfigError(f"Transform.{name} must be an int or (height, width) pair of ints in [1, {hi}]; got {v!r}")


@dataclass(frozen=True)
class Transform:
    """Resize (antialiased bilinear) to `resize`, then optional center crop; images -> float [0, 1] tensors."""

    resize: int | tuple[int, int] = 256
    crop: int | tuple[int, int] | None = None

    def validate(self) -> None:
        """Raise ConfigError if a value is outside its allowed range."""
        _check_size("resize", self.resize, _MAX_SIDE)
        if self.crop is not None:
            _check_size("crop", self.crop, _MAX_SIDE)
            (rh, rw), (ch, cw) = _pair(self.resize), _pair(self.crop)
            if ch > rh or cw > rw:
                raise ConfigError(f"Transform.crop {(ch, cw)} must not exceed resize {(rh, rw)}")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of transformed images."""
        return _pair(self.crop) if self.crop is not None else _pair(self.resize)

    def _geometry(self, im: Image.Image, resample: Image.Resampling) -> Image.Image:
        rh, rw = _pair(self.resize)
        if im.size != (rw, rh):
            im = im.resize((rw, rh), resample)
        if self.crop is not None:
            ch, cw = _pair(self.crop)
            top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
            im = im.crop((left, top, left + cw, top + ch))
        return im

    def to_uint8(self, img: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> uint8 (3, H', W'): the resized, cropped pixels (4x smaller than float)."""
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"Transform expects a uint8 (H, W, 3) image; got {img.dtype} {img.shape}")
        out = np.array(self._geometry(Image.fromarray(img), Image.Resampling.BILINEAR))  # writable copy
        return torch.from_numpy(out).permute(2, 0, 1)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> float32 (3, H', W') in [0, 1] (exactly ``to_uint8(img) / 255``)."""
        return self.to_uint8(img).float().div_(255.0)

    def mask(self, m: np.ndarray) -> torch.Tensor:
        """bool (H, W) -> bool (H', W'), nearest-neighbour so it stays binary."""
        if m.ndim != 2:
            raise DataError(f"Transform.mask expects a (H, W) mask; got shape {m.shape}")
        im = Image.fromarray((m != 0).astype(np.uint8) * 255)
        return torch.from_numpy(np.asarray(self._geometry(im, Image.Resampling.NEAREST)) > 127)

    def to_dict(self) -> dict[str, Any]:
        conv = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        return {"resize": conv(self.resize), "crop": conv(self.crop)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Transform":
        if unknown := set(d) - {"resize", "crop"}:
            raise ConfigError(f"unknown Transform keys {sorted(unknown)}; allowed: resize, crop")
        conv = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        return cls(resize=conv(d.get("resize", 256)), crop=conv(d.get("crop")))


def preprocessing(paper: Transform | Mapping[str, Any], resize: int | None = None, crop: int | None = None) -> Transform:
    """The one rule that turns user-given ``resize`` / ``crop`` into the Transform every command uses.

    ``paper`` is the method's paper preprocessing (``BaseDetector.paper_transform``). A value that is not
    given (None) is the paper's; ``crop=0`` means no crop. So ``resize=300`` alone keeps the paper crop,
    ``crop=200`` alone keeps the paper resize. ``resize`` must be an integer >= 1, ``crop`` an integer >= 0,
    and a crop larger than the resize is an error (ConfigError naming the allowed values).
    """
    if not isinstance(paper, Transform):
        paper = Transform.from_dict(dict(paper))
    for name, v, low in (("resize", resize, 1), ("crop", crop, 0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= _MAX_SIDE):
            zero = " (0 = no crop)" if name == "crop" else ""
            raise ConfigError(f"{name} must be an integer in [{low}, {_MAX_SIDE}]{zero} or unset for the paper "
                              f"setting ({getattr(paper, name)!r}); got {v!r}")
    tf = Transform(resize=paper.resize if resize is None else int(resize),
                   crop=paper.crop if crop is None else (int(crop) or None))
    if tf.crop is not None and tf.resize is not None and (
            _pair(tf.crop)[0] > _pair(tf.resize)[0] or _pair(tf.crop)[1] > _pair(tf.resize)[1]):
        raise ConfigError(f"crop {tf.crop!r} must not exceed resize {tf.resize!r}; give a crop <= the resize, "
                          "or crop 0 for no crop")
    tf.validate()
    return tf


@dataclass
class Split:
    """Decoded images of one split: images (N, 3, H, W) float32 in [0, 1] or uint8; labels (N,); masks
    (N, H, W) bool, None when the dataset has no ground truth; ``skipped``: unreadable files left out
    (only with ``skip_bad``)."""

    images: torch.Tensor
    labels: np.ndarray
    masks: torch.Tensor | None
    defect_types: list[str]
    paths: list[Path]
    skipped: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)
