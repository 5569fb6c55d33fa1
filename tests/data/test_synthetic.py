"""Synthetic MVTec-layout generator: deterministic, loadable, masks match defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flawmap.data import (
    Transform,
    default_synthetic_root,
    ensure_synthetic_dataset,
    list_categories,
    load_image,
    load_split,
    make_synthetic_mvtec,
    scan_category,
)
from flawmap.data.synthetic import DEFAULT_CATEGORIES, SUBTLE_CONTRAST, SYNTHETIC_VERSION
from flawmap.errors import ConfigError, DataError

SMALL = dict(n_train=4, n_test_good=3, n_test_defect=6, size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(tmp_path_factory.mktemp("syn") / "a", seed=3, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(small_root: Path, tmp_path: Path) -> None:
    again = _files(make_synthetic_mvtec(tmp_path / "b", seed=3, **SMALL))
    assert again == _files(small_root) and len(again) == 2 * (4 + 3 + 6 + 6)
    other = _files(make_synthetic_mvtec(tmp_path / "c", seed=4, **SMALL))
    assert other.keys() == again.keys()
    changed = [k for k in again if not k.endswith("_mask.png") and other[k] != again[k]]
    assert len(changed) == 2 * (4 + 3 + 6)


def test_layout_loads_and_masks_match_defects(small_root: Path) -> None:
    assert list_categories(small_root) == ["object", "texture"]
    for cat in ("object", "texture"):
        data = scan_category(small_root, cat)
        assert data.has_ground_truth and len(data.train) == 4
        assert data.test_counts == {"good": 3, "scratch": 2, "blob": 2, "color": 2}
        split = load_split(data, "test", Transform(64), workers=2)
        assert split.masks is not None
        area = split.masks.flatten(1).float().mean(1)
        defect = torch.from_numpy(split.labels == 1)
        assert (area[defect] > 0.002).all() and (area[defect] < 0.1).all() and (area[~defect] == 0).all()
        for i in torch.nonzero(defect).flatten().tolist():  # the masked pixels really differ from good images
            good_mean = split.images[~defect].mean(0)
            m = split.masks[i]
            assert (split.images[i][:, m] - good_mean[:, m]).abs().max(0).values.mean() > 0.1


def test_categories_look_different(small_root: Path) -> None:
    tex = load_image(small_root / "texture" / "train" / "good" / "000.png").astype(float)
    obj = load_image(small_root / "object" / "train" / "good" / "000.png").astype(float)
    assert tex.std() > 5 and obj.std() > 20
    assert obj[0, 0].max() < 80 and obj[32, 32].max() > 100  # plain dark background, bright object centre


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="widget"):
        make_synthetic_mvtec(tmp_path, categories=("widget",))
    with pytest.raises(ConfigError, match="size"):
        make_synthetic_mvtec(tmp_path, size=8)
    with pytest.raises(ConfigError, match="n_train"):
        make_synthetic_mvtec(tmp_path, n_train=0)
    make_synthetic_mvtec(tmp_path, categories=("texture_b",), n_train=1, n_test_good=1, n_test_defect=0, size=32)
    with pytest.raises(DataError, match="texture_b"):
        make_synthetic_mvtec(tmp_path, categories=("texture_b",))


def test_default_root_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLAWMAP_DATA_HOME", str(tmp_path / "home"))
    assert SYNTHETIC_VERSION == "synthetic-v2"  # v1 caches (no hard category) are not reused
    assert default_synthetic_root() == tmp_path / "home" / "synthetic-v2"
    monkeypatch.delenv("FLAWMAP_DATA_HOME")
    assert default_synthetic_root() == Path.home() / ".cache" / "flawmap" / "synthetic-v2"


def test_ensure_generates_once_atomically(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLAWMAP_DATA_HOME", str(tmp_path))
    root = ensure_synthetic_dataset()
    assert root == tmp_path / "synthetic-v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic-v2"]  # no temp folder left behind
    assert list_categories(root) == ["hard", "object", "texture"] == sorted(DEFAULT_CATEGORIES)
    stamp = (root / "texture" / "train" / "good" / "000.png").stat().st_mtime_ns
    assert ensure_synthetic_dataset(root) == root
    assert (root / "texture" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    junk = tmp_path / "junk"
    (junk / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="junk"):
        ensure_synthetic_dataset(junk)


def test_interrupted_generation_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import flawmap.data.synthetic as syn

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "make_synthetic_mvtec", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


# ---- the hard category: random pose, small low-contrast defects, exact masks ----------------------------
@pytest.fixture(scope="module")
def hard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(tmp_path_factory.mktemp("hard"), categories=("hard",), n_train=10, n_test_good=2,
                                n_test_defect=9, size=128, seed=0)


def _pose(img: np.ndarray) -> tuple[float, float, float]:
    """(centroid y, centroid x, axis angle in [0, pi)) of the bright part on the dark background."""
    fg = (img.astype(float) @ [0.299, 0.587, 0.114]) > 90
    yy, xx = np.nonzero(fg)
    cy, cx = yy.mean(), xx.mean()
    cov = np.cov(np.stack([xx - cx, yy - cy]))
    w, v = np.linalg.eigh(cov)
    return cy, cx, float(np.arctan2(v[1, 1], v[0, 1]) % np.pi)


def test_hard_objects_have_random_poses(hard_root: Path) -> None:
    poses = np.array([_pose(load_image(p)) for p in sorted((hard_root / "hard" / "train" / "good").iterdir())])
    assert poses[:, 0].std() > 4 and poses[:, 1].std() > 4  # not all at the same place (pixels)
    angles = np.sort(poses[:, 2])
    gaps = np.diff(np.concatenate([angles, angles[:1] + np.pi]))
    assert gaps.max() < np.pi / 2  # orientations spread over the half circle, not one pose
    obj = np.array([_pose(load_image(p)) for p in sorted((hard_root / "hard" / "test" / "good").iterdir())])
    assert np.ptp(obj[:, 2]) > 0.05 or np.ptp(obj[:, 1]) > 2


def test_hard_defects_are_small(hard_root: Path) -> None:
    data = scan_category(hard_root, "hard")
    assert data.test_counts == {"good": 2, "scratch": 3, "blob": 3, "color": 3}
    split = load_split(data, "test", Transform(128))
    assert split.masks is not None
    area = split.masks.flatten(1).float().mean(1)
    defect = torch.from_numpy(split.labels == 1)
    assert (area[defect] > 0.0002).all() and (area[defect] < 0.01).all() and (area[~defect] == 0).all()
    default = make_synthetic_mvtec(hard_root.parent / "other", categories=("object",), n_train=1, n_test_good=1,
                                   n_test_defect=9, size=128, seed=0)
    other = load_split(scan_category(default, "object"), "test", Transform(128))
    assert other.masks is not None and other.masks.flatten(1).float().mean(1)[1:].mean() > 3 * area[defect].mean()


@pytest.mark.parametrize("kind", ["scratch", "blob", "color"])
def test_hard_defects_are_low_contrast_with_exact_masks(kind: str) -> None:
    from flawmap.data import synthetic as syn

    size = 128
    grid = np.mgrid[0:size, 0:size].astype(np.float64)
    g = (grid[0], grid[1])
    for k in range(6):
        rng = np.random.default_rng([0, k])
        img, (cy, cx, *_rest) = syn._part(rng, np.random.default_rng(0), size, g)
        before = img.copy()
        mask = syn._add_defect(img, kind, rng, np.array([cy, cx]), g, subtle=True)
        changed = np.abs(img - before).max(-1) > 0
        assert changed.sum() > 0 and (changed == mask).all()  # the mask is exactly the changed pixels
        assert mask.mean() < 0.01  # small
        diff = np.abs(img - before)[mask]  # low contrast:
        if kind == "color":  # same luminance, half the hue change of the other categories' spots
            assert np.abs((img - before)[mask] @ [0.299, 0.587, 0.114]).max() < 0.01
        else:  # at most SUBTLE_CONTRAST (20%) darker or brighter than the surface under it
            assert (diff <= SUBTLE_CONTRAST * before[mask] + 1e-9).all()
        assert diff.max(-1).mean() < (0.3 if kind == "color" else 0.2)  # of 1.0 = full scale
        q = lambda x: np.rint(x * 255)  # noqa: E731 - and still visible in the 8-bit file
        assert (q(img) != q(before)).any(-1)[mask].mean() > 0.9
        loud = before.copy()  # the other categories' defects of this kind are far stronger
        loud_mask = syn._add_defect(loud, kind, np.random.default_rng([0, k]), np.array([cy, cx]), g)
        assert np.abs(loud - before)[loud_mask].max(-1).mean() > diff.max(-1).mean()
