"""Fit and evaluate the five methods on one category, on CUDA and the CPU, same images: the driver of
``benchmarks/gpu_check.sh`` (which installs flawmap and runs the contract tests first).

    python benchmarks/gpu_check.py --out RESULTS_DIR --device cuda          # CUDA, then the same runs on the CPU
    python benchmarks/gpu_check.py --out RESULTS_DIR --device cpu --small   # CI-sized

Data (--data): ``auto`` = gpu_payload/bottle_small when present (``benchmarks/make_small_bottle.py``), else
a tiny synthetic category (``flawmap.data.make_synthetic_mvtec``); ``synthetic`` forces the latter; or an
MVTec root (with --category). Each method runs through the Python API (get_detector -> fit -> predict ->
metrics.evaluate) with its paper hyperparameters (``--small``: its ``tiny_params``, 64 px, few images), or
those of ``--preset NAME`` (e.g. ``fast``: FastFlow and RIAD stop at convergence within the budget; the
rows say where they stopped).

Trained methods (FastFlow, RIAD) get a training-time budget per run (--train-budget-s): one epoch is run
and timed, then training resumes from that epoch's checkpoint up to min(paper epochs or --epochs-*,
budget / seconds per epoch) epochs; the CPU run takes at most the epochs of the CUDA run, so both train
the same model when the CPU can afford it. Runs are ordered all-CUDA first; a run that would end after
--deadline-s (rough cost: 30 s, trained runs 2 budgets + 30 s) is skipped and marked so. Results, written
after every run: RESULTS_DIR/gpu_check.json and gpu_check.md (fit s, s/epoch, predict ms/image, image /
pixel AUROC, AUPRO; CPU / CUDA ratios).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from flawmap import __version__, get_detector
from flawmap.data import load_split, make_synthetic_mvtec, scan_category
from flawmap.io import atomic_write_text
from flawmap.metrics import evaluate
from flawmap.presets import preset_params, preset_transform
from flawmap.registry import detector_class

METHODS = ("patchcore", "padim", "spade", "fastflow", "riad")
TRAINED = ("fastflow", "riad")
REPO = Path(__file__).resolve().parents[1]
SMALL_BOTTLE = REPO / "gpu_payload" / "bottle_small"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _data(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    if args.data == "auto":
        args.data = str(SMALL_BOTTLE.parent) if (SMALL_BOTTLE / "train").is_dir() else "synthetic"
        args.category = SMALL_BOTTLE.name if args.data != "synthetic" else args.category
    if args.data == "synthetic":
        return make_synthetic_mvtec(tmp / "synthetic", categories=("object",), n_train=10, n_test_good=3,
                                    n_test_defect=5, size=128, seed=0), "object"
    return Path(args.data), args.category


def _params(method: str, args: argparse.Namespace, device: str, epochs: int | None, ckpt: Path | None) -> dict[str, Any]:
    cls = detector_class(method)
    params: dict[str, Any] = {**preset_params(args.preset, method, cls.tiny_params() if args.small else {}),
                              "device": device}
    if method in TRAINED:
        params.update(epochs=epochs, checkpoint_dir=str(ckpt))
    return params


def _fit(method: str, args: argparse.Namespace, device: str, train: torch.Tensor, cap: int | None,
         tmp: Path) -> tuple[Any, dict[str, Any]]:
    """Fit; trained methods: one timed epoch, then resume up to the budget. -> (detector, timing row)."""
    if method not in TRAINED:
        det = get_detector(method, **_params(method, args, device, None, None))
        t0 = time.perf_counter()
        det.fit(train)
        _sync(device)
        return det, {"fit_s": time.perf_counter() - t0}
    default = detector_class(method).default_params()["epochs"] if not args.small else 1
    most = min(getattr(args, f"epochs_{method}") or default, cap or math.inf)
    ckpt = tmp / f"ckpt-{method}-{device.replace(':', '')}"
    det = get_detector(method, **_params(method, args, device, 1, ckpt))
    t0 = time.perf_counter()
    det.fit(train)
    _sync(device)
    seconds = list(det.train_report.epoch_seconds)
    epochs = int(max(1, min(most, args.train_budget_s // max(seconds[0], 1e-9))))
    if epochs > 1:
        det.set_params(epochs=epochs).fit(train)  # resumes after epoch 1 (exact resume)
        _sync(device)
        seconds += det.train_report.epoch_seconds
    fit_s = time.perf_counter() - t0
    rep = det.train_report
    return det, {"fit_s": fit_s, "epochs": rep.epochs_done, "epoch_cap": epochs, "stopped_early": rep.stopped_early,
                 "s_per_epoch": statistics.median(seconds), "first_epoch_s": seconds[0]}


def run(method: str, args: argparse.Namespace, device: str, train, test, cap: int | None, tmp: Path) -> dict[str, Any]:
    det, row = _fit(method, args, device, train.images, cap, tmp)
    det.predict(test.images[:2])  # warm-up (CUDA context, cuDNN autotuning): not timed
    t0 = time.perf_counter()
    res = det.predict(test.images)
    _sync(device)
    row["predict_ms_per_image"] = 1000 * (time.perf_counter() - t0) / len(test.images)
    m = evaluate(test.labels, res.scores, test.masks, res.maps)
    row.update({k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")})
    if method == "spade":
        row["note"] = "pixel search: " + ("bf16 filter + fp32 check" if det._index.filter else "dense fp32")
    return row


def _environment(args: argparse.Namespace, root: Path, category: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "flawmap": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda,
        "data": str(root), "category": category,
        "small": args.small, "preset": args.preset or "paper", "train_budget_s": args.train_budget_s, "load_average": os.getloadavg()[0]}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(result: dict[str, Any]) -> str:
    env, rows = result["environment"], result["runs"]
    lines = [f"# flawmap GPU check ({time.strftime('%Y-%m-%d %H:%M')})", "",
             ", ".join(f"{k} {v}" for k, v in env.items()), "",
             f"Contract tests: {result.get('contract', 'not run by this driver (see contract.log)')}", "",
             "| method | device | epochs | fit s | s/epoch | predict ms/image | image AUROC | pixel AUROC | AUPRO | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        stop = " (stopped early)" if r.get("stopped_early") else ""
        lines.append(f"| {r['method']} | {r['device']} | {_fmt(r.get('epochs'))}{stop} | {_fmt(r.get('fit_s'), 1)} | "
                     f"{_fmt(r.get('s_per_epoch'), 2)} | {_fmt(r.get('predict_ms_per_image'), 1)} | "
                     f"{_fmt(r.get('image_auroc'))} | {_fmt(r.get('pixel_auroc'))} | {_fmt(r.get('aupro'))} | "
                     f"{r.get('note', '')} |")
    by = {(r["method"], r["device"]): r for r in rows if "fit_s" in r}
    pairs = [(m, by[(m, "cuda")], by[(m, "cpu")]) for m in METHODS if (m, "cuda") in by and (m, "cpu") in by]
    if pairs:
        lines += ["", "CPU / CUDA (same images; trained methods: same epochs when both rows say so)", "",
                  "| method | fit | s/epoch | predict | image AUROC cuda - cpu | pixel AUROC cuda - cpu |",
                  "|---|---|---|---|---|---|"]
        for m, g, c in pairs:
            def ratio(k: str) -> str:
                return f"{c[k] / g[k]:.1f}x" if g.get(k) and c.get(k) else ""

            def diff(k: str) -> str:
                return f"{g[k] - c[k]:+.4f}" if g.get(k) is not None and c.get(k) is not None else ""

            lines.append(f"| {m} | {ratio('fit_s')} | {ratio('s_per_epoch')} | {ratio('predict_ms_per_image')} | "
                         f"{diff('image_auroc')} | {diff('pixel_auroc')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-cpu", action="store_true", help="with --device cuda: skip the CPU comparison runs")
    ap.add_argument("--small", action="store_true", help="CI-sized: tiny_params, 64 px, 1 epoch, few images")
    ap.add_argument("--data", default="auto", help="auto, synthetic, or an MVTec root folder")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--preset", default=None, help="hyperparameter preset (flawmap list --presets), e.g. fast")
    ap.add_argument("--epochs-fastflow", type=int, default=None, help="epoch cap (default: paper 500; --small: 1)")
    ap.add_argument("--epochs-riad", type=int, default=None, help="epoch cap (default: paper 300; --small: 1)")
    ap.add_argument("--train-budget-s", type=float, default=None, help="training seconds per trained run (default 60; --small 5)")
    ap.add_argument("--deadline-s", type=float, default=420, help="no run starts that would end after this")
    ap.add_argument("--contract", default=None, help="contract test outcome to record (set by gpu_check.sh)")
    args = ap.parse_args(argv)
    if args.train_budget_s is None:
        args.train_budget_s = 5.0 if args.small else 60.0
    start = time.perf_counter()
    methods = [m for m in args.methods.split(",") if m]
    devices = [args.device] + (["cpu"] if args.device == "cuda" and not args.no_cpu else [])
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flawmap-gpu-check-") as tmpdir:
        tmp = Path(tmpdir)
        root, category = _data(args, tmp)
        data = scan_category(root, category)
        splits: dict[str, tuple[Any, Any]] = {}
        result: dict[str, Any] = {"environment": _environment(args, root, category), "runs": []}
        if args.contract:
            result["contract"] = args.contract
        failed = False
        for device in devices:
            for method in methods:
                row: dict[str, Any] = {"method": method, "device": device}
                tf = preset_transform(args.preset, method, resize=64 if args.small else None, crop=0 if args.small else None)
                key = json.dumps(tf.to_dict(), sort_keys=True)
                if key not in splits:
                    train, test = load_split(data, "train", tf), load_split(data, "test", tf)
                    if args.small:
                        train.images = train.images[:16]
                    splits[key] = (train, test)
                train, test = splits[key]
                row.update(n_train=len(train.images), n_test=len(test.images), image_size=list(tf.output_size))
                need = 2 * args.train_budget_s + 30 if method in TRAINED else 30  # rough cost of the run
                if time.perf_counter() - start + need > args.deadline_s:
                    row["note"] = f"skipped: would end after --deadline-s {args.deadline_s:g}"
                else:
                    cap = next((r.get("epochs") for r in result["runs"]
                                if r["method"] == method and r["device"] != device and "epochs" in r), None)
                    try:
                        row.update(run(method, args, device, train, test, cap, tmp))
                    except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others still run
                        failed = True
                        row["note"] = f"FAILED: {type(exc).__name__}: {exc}"[:500]
                print(json.dumps(row), flush=True)
                result["runs"].append(row)
                result["elapsed_s"] = round(time.perf_counter() - start, 1)
                atomic_write_text(args.out / "gpu_check.json", json.dumps(result, indent=2))
                atomic_write_text(args.out / "gpu_check.md", markdown(result))
    print(markdown(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
