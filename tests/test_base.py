"""Model files, the registry and input conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flawmap import get_detector, list_detectors, load_detector
from flawmap.base import as_images, read_model_config
from flawmap.errors import ConfigError, ModelFileError


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    det = get_detector("patchcore", backbone="efficientnet_lite0").fit(tiny_data[0].images[:4])
    return det.save(tmp_path_factory.mktemp("m") / "model", extra={"note": "hello"})


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_model_folder_is_json_and_safetensors(saved: Path) -> None:
    cfg = read_model_config(saved)
    assert cfg["detector"] == "patchcore" and cfg["extra"] == {"note": "hello"}
    assert cfg["params"]["backbone"] == "efficientnet_lite0"
    raw = (saved / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert "memory_bank_" in header  # learned state only: no backbone weights in the file
    assert not [k for k in header if k.startswith("_backbone")]


def test_incompatible_version_is_a_clear_error(saved: Path, tmp_path: Path) -> None:
    m = _copy(saved, tmp_path / "old")
    cfg = json.loads((m / "config.json").read_text())
    cfg["format_version"] = 999
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="format version 999.*refit"):
        load_detector(m)


@pytest.mark.parametrize("damage", ["no_tensors", "bad_json", "not_flawmap", "bad_tensors", "unknown_detector"])
def test_damaged_model_files(saved: Path, tmp_path: Path, damage: str) -> None:
    m = _copy(saved, tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    if damage == "no_tensors":
        (m / "model.safetensors").unlink()
    elif damage == "bad_json":
        (m / "config.json").write_text("{nope")
    elif damage == "not_flawmap":
        (m / "config.json").write_text(json.dumps({"format": "pickle"}))
    elif damage == "bad_tensors":
        (m / "model.safetensors").write_bytes(b"\x00" * 16)
    else:
        cfg["detector"] = "nosuchmethod"
        (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((ModelFileError, ConfigError)):
        load_detector(m)


def test_save_replaces_atomically(tiny_data, saved: Path, tmp_path: Path) -> None:
    m = _copy(saved, tmp_path / "m")
    det = load_detector(m)
    det.save(m)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left


def test_registry_errors() -> None:
    assert "patchcore" in list_detectors()
    with pytest.raises(ConfigError, match="available: .*patchcore"):
        get_detector("patchcorr")
    with pytest.raises(ConfigError, match="allowed: .*coreset_ratio"):
        get_detector("patchcore", coreset=0.1)


def test_as_images_conversions() -> None:
    u8 = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    u8[..., 0] = 255
    x = as_images(u8)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and x[:, 0].eq(1).all()
    assert as_images(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)).eq(1).all()
    for bad in (np.zeros((2, 8, 8)), torch.zeros(2, 1, 8, 8), torch.zeros(0, 3, 8, 8), [1, 2]):
        with pytest.raises(ConfigError):
            as_images(bad)


def test_patchcore_paper_maths_on_tiny_bank() -> None:
    """Image score = eq. 7 re-weighting of the max patch distance, checked by hand."""
    from flawmap.detectors.patchcore import PatchCore

    det = PatchCore(num_neighbors=2, sigma=0)
    det.memory_bank_ = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    det.grid_ = [1, 2]
    det.fitted_ = True
    det._build_index()  # derived from memory_bank_ (fit and load build it)
    emb = torch.tensor([[[[0.1, 0.0], [3.0, 0.0]]]])  # (B=1, h=1, w=2, D=2)
    class FakeBackbone:  # stands in for a FeatureExtractor; _embed is replaced below
        name, weights_id, layers, device = "fake", "fake-0", ("l",), torch.device("cpu")

        def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"l": x}

    det._backbone = FakeBackbone()  # type: ignore[assignment]
    det._embed = lambda f: emb  # type: ignore[method-assign]
    scores, maps = det._predict(torch.zeros(1, 3, 1, 2))
    # patch distances: 0.1 (to m0), 2.0 (to m1 or m2: m1 is at 2.0, m2 at 2.0 -> m1 first)
    s_star = 2.0
    # N_b(m*) for m* = [1, 0], b = 2: itself and [0, 0] -> distances from m_test = [3, 0]: 2 and 3
    d = np.array([2.0, 3.0])
    w = 1 - np.exp(s_star) / np.exp(d).sum()
    assert scores.item() == pytest.approx(w * s_star, rel=1e-5)
    np.testing.assert_allclose(maps.numpy(), [[[0.1, 2.0]]], rtol=1e-5)


def _f_agg_brute_force(f: torch.Tensor, p: int) -> torch.Tensor:
    """Mean over the p x p neighbourhood of each position, neighbours outside the map left out."""
    b, c, h, w = f.shape
    out = torch.empty_like(f)
    r = p // 2
    for i in range(h):
        for j in range(w):
            win = f[:, :, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1]
            out[:, :, i, j] = win.mean(dim=(2, 3))
    return out


def _channel_pool_brute_force(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Adaptive average over channels: output i averages channels [floor(i c / D), ceil((i + 1) c / D))."""
    c = x.shape[-1]
    cols = [x[..., (i * c) // dim:-((-(i + 1) * c) // dim)].mean(dim=-1) for i in range(dim)]
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("patch_size", [1, 3, 5])
def test_patchcore_embed_is_f_agg_then_concat_then_channel_pooling(patch_size: int) -> None:
    """PatchCore._embed on tiny tensors against loops: f_agg per layer, the coarser layer upsampled to
    the finest grid, concatenation, then the projection to embedding_dim by channel averaging."""
    from flawmap.detectors.patchcore import PatchCore

    g = torch.Generator().manual_seed(0)
    fine = torch.rand(2, 3, 6, 5, generator=g)  # (B, C1, h, w) stride-8 stage
    coarse = torch.rand(2, 4, 3, 3, generator=g)  # (B, C2, h', w') stride-16 stage
    det = PatchCore(patch_size=patch_size, embedding_dim=5)
    det.agg_padding_ = "valid"  # the brute force leaves outside cells out (the "zeros" rule: tests/detectors/test_patchcore.py)
    emb = det._embed({"layer2": fine, "layer3": coarse})
    assert emb.shape == (2, 6, 5, 5)
    up = torch.nn.functional.interpolate(_f_agg_brute_force(coarse, patch_size), size=(6, 5), mode="bilinear",
                                         align_corners=False)
    cat = torch.cat([_f_agg_brute_force(fine, patch_size), up], dim=1).permute(0, 2, 3, 1)  # (B, h, w, 7)
    torch.testing.assert_close(emb, _channel_pool_brute_force(cat, 5), rtol=1e-5, atol=1e-6)
    # without the projection (D >= channels) the concatenated features come out unchanged
    det.embedding_dim = 64
    wide = det._embed({"layer2": fine, "layer3": coarse})
    torch.testing.assert_close(wide, cat, rtol=1e-5, atol=1e-6)
