"""Synthetic MVTec-layout generator: deterministic, loadable, masks match defects."""

from __future__ import annotations

from pathlib import Path

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
    assert default_synthetic_root() == tmp_path / "home" / "synthetic-v1"
    monkeypatch.delenv("FLAWMAP_DATA_HOME")
    assert default_synthetic_root() == Path.home() / ".cache" / "flawmap" / "synthetic-v1"


def test_ensure_generates_once_atomically(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLAWMAP_DATA_HOME", str(tmp_path))
    root = ensure_synthetic_dataset()
    assert root == tmp_path / "synthetic-v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic-v1"]  # no temp folder left behind
    assert list_categories(root) == ["object", "texture"]
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
