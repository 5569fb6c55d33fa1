"""Loading image files into tensors: decode -> transform -> keep the uint8 (3, H', W') pixels, drop the decode.

One loader for every source (an MVTec split, a folder of good images, a list of files): a thread pool
decodes one full-resolution image per worker at a time, applies the model's Transform and keeps only
the transformed uint8 pixels, so the memory held is N x 3 x H' x W' bytes (150 KB per image at 224 px)
whatever the size of the files. ``keep_uint8=False`` converts to float32 in [0, 1] at the end (the
values are exactly the same: the Transform's float output is its uint8 output / 255).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..progress import progress
from .images import IMAGE_SUFFIXES, check_image_size, load_image, read_mask, warn_distorted
from .mvtec import CategoryData, Split, Transform, _names, _visible, _warn_once


def find_images(folder: str | PathLike[str], what: str = "image") -> list[Path]:
    """Sorted image files under ``folder``, searched recursively (hidden files and folders and files of
    other types ignored). A missing folder, a file, or a folder without images -> DataError."""
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{what} folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{what} folder {root} is not a folder")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and all(_visible(Path(part)) for part in p.relative_to(root).parts))
    if not found:
        raise DataError(f"{what} folder {root} contains no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return found


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1; got {workers!r}")


def load_images(paths: Sequence[Path], transform: Transform, *, mask_paths: Sequence[Path | None] | None = None,
                desc: str = "load", workers: int = 4, skip_bad: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, list[int], list[Path]]:
    """Decode and transform image files (and masks) with a thread pool and a progress bar.

    Returns (images uint8 (K, 3, H', W'), masks bool (K, H', W') or None, kept indices (K,), skipped
    paths). An unreadable or too-small image raises DataError naming it, or with ``skip_bad`` is left
    out and listed in ``skipped`` (masks are never skipped: a bad mask is always an error).
    """
    _check_workers(workers)
    transform.validate()
    n = len(paths)
    if n == 0:
        raise DataError(f"{desc}: no images to load")
    h, w = transform.output_size
    images = torch.empty((n, 3, h, w), dtype=torch.uint8)
    masks = torch.zeros((n, h, w), dtype=torch.bool) if mask_paths is not None else None
    distorted: list[Path] = []  # list.append is atomic: safe from the loader threads
    grey: list[Path] = []
    bad: dict[int, Path] = {}
    stretched = transform.stretched_to()  # None: letterboxed ("pad"), nothing is distorted

    def work(i: int) -> None:
        p = Path(paths[i])
        try:
            img = check_image_size(load_image(p), p, stretched, distorted)
        except DataError:
            if not skip_bad:
                raise
            bad[i] = p
            return
        images[i] = transform.to_uint8(img)  # the full-resolution decode is dropped on return
        mp = mask_paths[i] if mask_paths is not None else None
        if masks is not None and mp is not None:
            m, binary = read_mask(mp)
            if not binary:
                grey.append(mp)
            if m.shape != img.shape[:2]:
                raise DataError(f"mask {mp} has size {m.shape[1]}x{m.shape[0]} (WxH) but its image "
                                f"{p} has size {img.shape[1]}x{img.shape[0]}")
            masks[i] = transform.mask(m)

    pool = ThreadPoolExecutor(max_workers=min(workers, n), thread_name_prefix="flawmap-load")
    try:
        for _ in progress(pool.map(work, range(n)), desc=desc, total=n, unit="img"):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on error: drop queued work, re-raise the first failure
    if stretched is not None:
        warn_distorted(sorted(distorted), stretched)
    if grey:
        _warn_once(f"{len(grey)} ground-truth mask(s) are not binary (more than one nonzero grey level; MVTec "
                   f"masks are 0/255): every nonzero pixel counts as defect: {_names(sorted(grey))}")
    kept = [i for i in range(n) if i not in bad]
    if bad:
        images = images[kept]
        masks = None if masks is None else masks[kept]
    return images, masks, kept, [bad[i] for i in sorted(bad)]


def _finish(images: torch.Tensor, keep_uint8: bool) -> torch.Tensor:
    return images if keep_uint8 else images.float().div_(255.0)


def load_files(paths: Sequence[str | PathLike[str]], transform: Transform, *, desc: str = "images",
               workers: int = 4, skip_bad: bool = False, keep_uint8: bool = False) -> Split:
    """A Split of good images (label 0, no masks) from a list of files; see ``load_images``."""
    files = [Path(p) for p in paths]
    images, _, kept, skipped = load_images(files, transform, desc=desc, workers=workers, skip_bad=skip_bad)
    if not kept:
        raise DataError(f"{desc}: none of the {len(files)} images could be read (first: {skipped[0]})")
    return Split(_finish(images, keep_uint8), np.zeros(len(kept), dtype=np.int64), None, ["good"] * len(kept),
                 [files[i] for i in kept], skipped)


def load_folder(path: str | PathLike[str], transform: Transform, *, workers: int = 4, skip_bad: bool = False,
                keep_uint8: bool = False) -> Split:
    """Every image under ``path`` (recursive, any supported format, mixed sizes) as a Split of good images
    (label 0, masks None): the same type ``load_split`` returns for an MVTec split."""
    return load_files(find_images(path), transform, desc=Path(path).name or str(path), workers=workers,
                      skip_bad=skip_bad, keep_uint8=keep_uint8)


def load_split(data: CategoryData, split: Literal["train", "test"], transform: Transform, workers: int = 4,
               keep_uint8: bool = False) -> Split:
    """Decode and transform all images (and masks) of an MVTec split; see ``load_images``."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test'; got {split!r}")
    samples = data.train if split == "train" else data.test
    if not samples:
        raise DataError(f"{data.path}: the {split} split has no images")
    images, masks, _, _ = load_images([s.path for s in samples], transform, desc=f"{data.category}/{split}",
                                      workers=workers, mask_paths=[s.mask_path for s in samples]
                                      if data.has_ground_truth else None)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return Split(_finish(images, keep_uint8), labels, masks, [s.defect_type for s in samples], [s.path for s in samples])
