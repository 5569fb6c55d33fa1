"""Groups of correlated good images, so that calibration holds out whole groups, and the leakage check.

A held-out threshold (split conformal, ``metrics.thresholds.fpr_threshold``) promises its false-alarm rate
on new parts only if the calibration images are exchangeable with new parts. Good-image folders break
that: one part shot under several lights, bursts, video frames. A calibration image whose near-copy was
trained on scores low, so the threshold is too low and new parts are flagged far more often than promised.

``group_by`` (``flawmap fit --group-by``) says which images belong together:

* ``"auto"`` (default): groups found in the images (``near_duplicate_groups``): connected components of the
  pairs of images whose descriptors are closer than ``NEAR_FACTOR`` x the median nearest-neighbour distance;
* ``"folder"``: each sub-folder (relative to the training folder) is a group;
* a regular expression with a capture group: the first group of its match in the relative path (e.g.
  ``"tile(\\d+)"``); a path it does not match is its own group;
* ``"none"``: every image is its own group (i.i.d. images).

Descriptor (``image_descriptors``): efficientnet_lite0's stride-16 and stride-32 feature maps, each
average-pooled to a ``DESCRIPTOR_GRID`` x ``DESCRIPTOR_GRID`` grid and L2-normalised, concatenated and
L2-normalised (D = (112 + 320) x 16); distances are cosine distances 1 - <a, b>. The grid keeps the layout:
globally pooled features describe a texture's statistics, which every tile of a surface shares, so shots of
one tile under other lights are farther apart than two tiles are (measured on the surface set of
``data.synthetic_surface``: 4 x 4 pooling links 76% of same-tile pairs at 91% purity, global pooling 53% at 15%).
The leakage check (``leakage_report``) compares the median distance from
calibration images to their nearest training image with the training images' own nearest-neighbour median
(``ratio``), and the same ratio for a split along the groups found in the images (``ratio_groups``): a leak
shows as ``ratio`` well below ``ratio_groups``. In an i.i.d. folder both are near 1.

Failure modes (docs: "Inspect your own parts"): a burst whose shots differ more than distinct parts do
(strong pose or lighting changes on near-identical parts) is not found, so give ``--group-by``; a folder
of near-identical parts (e.g. blank surfaces) may chain into one component, which is then cut back to at
most ``MAX_GROUP_SHARE`` of the images and reported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: the group_by rules besides a regular expression
GROUP_RULES = ("auto", "folder", "none")
#: pairs closer than NEAR_FACTOR x the median nearest-neighbour distance are near-copies (``near_duplicate_groups``)
NEAR_FACTOR = 2.0
#: a found group may hold at most this share of the images (a larger component is cut at a lower distance)
MAX_GROUP_SHARE = 0.25
#: ``leakage_report`` flags a leak when ratio < LEAK_RATIO x ratio_groups
LEAK_RATIO = 0.75
DESCRIPTOR_BACKBONE = "efficientnet_lite0"
#: the descriptor pools each feature map to this many cells per side
DESCRIPTOR_GRID = 4


@dataclass(frozen=True)
class GroupRule:
    """A parsed ``group_by``: ``kind`` in GROUP_RULES or "regex" (then ``pattern`` is set)."""

    kind: str
    pattern: re.Pattern[str] | None = None

    def describe(self) -> str:
        return f"regex {self.pattern.pattern!r}" if self.pattern is not None else self.kind


def parse_group_by(text: str | None) -> GroupRule:
    """"auto" (None), "folder", "none" or a regular expression with at least one capture group."""
    if text is None or text in GROUP_RULES:
        return GroupRule(text or "auto")
    try:
        pat = re.compile(str(text))
    except re.error as exc:
        raise ConfigError(f"--group-by {text!r} is not a valid regular expression ({exc}); allowed: "
                          f"{', '.join(GROUP_RULES)} or a regex with a capture group, e.g. 'part(\\d+)'") from None
    if pat.groups < 1:
        raise ConfigError(f"--group-by {text!r} has no capture group: put the part of the path that names the group "
                          f"in parentheses, e.g. 'part(\\d+)_' (or use one of {', '.join(GROUP_RULES)})")
    return GroupRule("regex", pat)


def groups_from_paths(files: Sequence[Path], rule: GroupRule, root: Path | None = None) -> np.ndarray | None:
    """Group ids (N,) int64 from the file paths ("folder", regex, "none"); None for "auto" (from the images).
    Paths are taken relative to ``root`` when they are under it."""
    if rule.kind == "auto":
        return None
    if rule.kind == "none":
        return np.arange(len(files), dtype=np.int64)
    keys: list[str] = []
    for i, f in enumerate(files):
        rel = Path(f)
        if root is not None:
            try:
                rel = Path(f).relative_to(root)
            except ValueError:
                pass
        if rule.kind == "folder":
            keys.append(rel.parent.as_posix())
        else:
            assert rule.pattern is not None
            m = rule.pattern.search(rel.as_posix())
            keys.append(f"={m.group(1)}" if m and m.group(1) is not None else f"#{i}")  # no match: its own group
    _, ids = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return ids.astype(np.int64)


def image_descriptors(images: Any, *, device: str = "auto", batch_size: int = 32) -> np.ndarray:
    """uint8 or float images (N, 3, H, W) -> (N, D) float32 unit-norm global descriptors (module docstring)."""
    import torch

    from ..components.backbones import create_backbone, layers_at_strides

    layers = layers_at_strides(DESCRIPTOR_BACKBONE, (16, 32))
    net = create_backbone(DESCRIPTOR_BACKBONE, layers, device=device)
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size]
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            feats = net(x.to(net.device))
            pooled = [torch.nn.functional.normalize(  # (B, C_l * g * g) per layer
                torch.nn.functional.adaptive_avg_pool2d(feats[name], DESCRIPTOR_GRID).flatten(1), dim=1) for name in layers]
            out.append(torch.nn.functional.normalize(torch.cat(pooled, dim=1), dim=1).cpu())  # (B, D)
    return torch.cat(out).numpy().astype(np.float32)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unit-norm (N, D), (M, D) -> (N, M) float64 cosine distances, clipped at 0."""
    return np.clip(1.0 - a.astype(np.float64) @ b.astype(np.float64).T, 0.0, None)


def distance_matrix(desc: np.ndarray) -> np.ndarray:
    """Unit-norm descriptors (N, D) -> (N, N) float32 cosine distances with +inf on the diagonal (an image is
    not its own neighbour): computed once per fit and shared by the group finder and the leakage check
    (4 N^2 bytes: 100 MB for 5,000 images)."""
    d = cosine_distances(desc, desc).astype(np.float32)
    np.fill_diagonal(d, np.inf)
    return d


def _components(adj: np.ndarray) -> np.ndarray:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    return connected_components(csr_matrix(adj), directed=False)[1].astype(np.int64)


def near_duplicate_groups(d: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Group ids (N,) of near-copies from the distances ``d`` (N, N) of ``distance_matrix``, and how they were found.

    tau = NEAR_FACTOR x median_i d_NN(i) (d_NN: cosine distance to the nearest other image); images i, j
    are linked when d(i, j) <= tau, and the groups are the connected components. If a component holds more
    than MAX_GROUP_SHARE of the images, tau is lowered (x 0.8 until none does), and ``info["cut"]`` says so.
    """
    n = len(d)
    d_nn = d.min(axis=1)
    tau = NEAR_FACTOR * float(np.median(d_nn)) if n > 1 else 0.0
    cut = False
    cap = max(2, int(MAX_GROUP_SHARE * n))
    while True:
        ids = _components(d <= tau) if n > 1 else np.zeros(n, np.int64)
        if np.bincount(ids).max() <= cap or tau <= 0.0:
            break
        tau, cut = 0.8 * tau, True
    sizes = np.bincount(ids)
    return ids, {"rule": "auto", "threshold": tau, "median_nn": float(np.median(d_nn)) if n > 1 else 0.0,
                 "groups": int(len(sizes)), "largest": int(sizes.max()) if n else 0,
                 "in_groups": int(sizes[ids].__gt__(1).sum()) if n else 0, "cut": cut}


def holdout_groups(ids: np.ndarray, n_cal: int, seed: int, max_cal: int | None = None) -> np.ndarray:
    """Boolean mask (N,) of calibration images: whole groups in a seeded random order until >= n_cal images,
    skipping a group that would take the calibration past ``max_cal`` images (e.g. N - 2: leave 2 to train)."""
    order = np.random.default_rng(seed).permutation(int(ids.max()) + 1 if len(ids) else 0)
    sizes = np.bincount(ids, minlength=len(order))
    take, total = [], 0
    for g in order:
        if total >= n_cal:
            break
        if sizes[g] and (max_cal is None or total + sizes[g] <= max_cal):
            take.append(g)
            total += int(sizes[g])
    return np.isin(ids, take)


def _ratio(d: np.ndarray, cal: np.ndarray) -> float:
    """median_{c in cal} d(c, train) / median_{t in train} d_NN(t within train): ~1 when exchangeable."""
    to_train = d[:, ~cal]  # (N, N_train): distances to the training images
    base = float(np.median(to_train[~cal].min(axis=1)))
    return float(np.median(to_train[cal].min(axis=1))) / max(base, 1e-12)


def leakage_report(d: np.ndarray, cal: np.ndarray, found: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The leakage check of a split: d (N, N) the ``distance_matrix`` of training + calibration images, cal (N,)
    bool (the calibration images), found (N,) the groups found in the images. ``ratio`` is the split's distance ratio
    (``_ratio``), ``ratio_groups`` the same for a split of the same size along ``found``, ``leak`` True when
    ratio < LEAK_RATIO x ratio_groups; ``near_copies`` is how many calibration images share a found group
    with a training image."""
    n_cal = int(cal.sum())
    ratio = _ratio(d, cal)
    ref = holdout_groups(found, n_cal, seed)
    ratio_groups = _ratio(d, ref) if 0 < ref.sum() < len(ref) else ratio
    shared = np.isin(found[cal], found[~cal])
    sizes = np.bincount(found)
    return {"ratio": round(ratio, 3), "ratio_groups": round(ratio_groups, 3), "near_copies": int(shared.sum()),
            "n_calibration": n_cal, "groups_found": int(len(sizes)), "images_in_groups": int((sizes[found] > 1).sum()),
            "leak": bool(ratio < LEAK_RATIO * ratio_groups)}


def leakage_line(report: dict[str, Any]) -> str | None:
    """One line for the user when the check found a leak, else None."""
    if not report.get("leak"):
        return None
    return (f"warning: {report['near_copies']} of {report['n_calibration']} calibration images have near-copies "
            f"among the training images (held-out/training distance ratio {report['ratio']:.2f} vs "
            f"{report['ratio_groups']:.2f} for a split along the {report['groups_found']} groups found in the images): "
            "the stated false-alarm rate is optimistic for new parts. Hold out whole parts: --group-by folder|REGEX, "
            "or --val-good DIR with images of other parts")


__all__ = ["GROUP_RULES", "GroupRule", "distance_matrix", "holdout_groups", "image_descriptors", "leakage_line", "leakage_report",
           "near_duplicate_groups", "parse_group_by", "groups_from_paths"]
