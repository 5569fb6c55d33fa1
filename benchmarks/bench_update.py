"""`flawmap update` under a lighting drift: false alarms on shifted good parts and misses on shifted defects,
before and after adding N shifted good images, and the update time versus a full refit.

    python benchmarks/bench_update.py --methods patchcore padim --n 5 10 20

Data: the embedded synthetic "object" parts (``flawmap.data.synthetic``), 128 px. The models are fitted on 30
good images and calibrated on 10 held-out ones (target false-alarm rate ``--target-fpr``). The drift: every
later image is brighter with a warm white balance (RGB x ``--shift``) and slightly blurred, as after a lamp
change. N of a pool of shifted good images are given to ``update_model`` (30% held out for calibration, with
the 10 previous calibration images); the test images (good and defective) are other shifted images. The
refit fits the same method on the 30 original + the same added images, for the time comparison.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def shift(img: np.ndarray, gains: list[float], blur: float) -> np.ndarray:
    out = np.clip(img.astype(np.float32) * np.asarray(gains, np.float32), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(blur))) if blur > 0 else out


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rates(model: Path, good: list[Path], bad: list[Path]) -> tuple[float, float]:
    """(false-alarm rate on ``good``, miss rate on ``bad``) of the model's stored decision."""
    from flawmap.data import load_image
    from flawmap.deploy.predictor import open_predictor

    pred = open_predictor(model, device="cpu")
    flag = lambda files: np.array([v.anomalous for v in pred.decide(pred.raw(pred.preprocess(  # noqa: E731
        [load_image(f) for f in files]))[0])])
    return float(flag(good).mean()), float(1 - flag(bad).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["patchcore", "padim"])
    ap.add_argument("--n", type=int, nargs="+", default=[5, 10, 20], help="shifted good images given to the update")
    ap.add_argument("--shift", type=float, nargs=3, default=[1.3, 1.15, 0.85], help="RGB gains of the drift")
    ap.add_argument("--blur", type=float, default=0.8, help="Gaussian blur radius of the drift (px)")
    ap.add_argument("--target-fpr", type=float, default=0.1)
    ap.add_argument("--work", default="benchmarks/results/update", help="data and models go here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from flawmap import get_detector
    from flawmap.data import Transform, load_image, make_synthetic_mvtec, scan_category
    from flawmap.deploy.calibration import fit_calibrated, plan_calibration
    from flawmap.deploy.update import plan_update, update_model

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    root = work / "data"
    if not (root / "object").is_dir():  # generated once (same seed -> the same files)
        make_synthetic_mvtec(root, categories=("object",), n_train=80, n_test_good=20, n_test_defect=20, size=128,
                             seed=3)
    data = scan_category(root, "object")
    train = [s.path for s in data.train]
    fit_files, cal_files, pool_src = train[:30], train[30:40], train[40:80]
    shifted = work / "shifted"
    for sub in ("pool", "good", "bad"):
        (shifted / sub).mkdir(parents=True, exist_ok=True)

    def write(files: list[Path], sub: str) -> list[Path]:
        out = []
        for i, f in enumerate(files):
            p = shifted / sub / f"{i:03d}.png"
            if not p.exists():
                Image.fromarray(shift(load_image(f), args.shift, args.blur)).save(p)
            out.append(p)
        return out

    pool = write(pool_src, "pool")
    good = write([s.path for s in data.test if s.label == 0], "good")
    bad = write([s.path for s in data.test if s.label == 1], "bad")
    clean_good = [s.path for s in data.test if s.label == 0]
    tf = Transform(resize=128)
    rows = []
    for method in args.methods:
        params = {"backbone": "efficientnet_lite0", "device": "cpu"}
        if method == "patchcore":
            params["coreset_ratio"] = 0.1
        base = work / f"{method}-v1"
        if base.exists():
            import shutil

            shutil.rmtree(base)
        t0 = time.perf_counter()
        det = get_detector(method, **params)
        fitted = fit_calibrated(det, plan_calibration(fit_files, val_good=cal_files), tf, target_fpr=args.target_fpr)
        det.save(base, extra=fitted.extra())
        fit_s = time.perf_counter() - t0
        fa0, miss0 = rates(base, good, bad)
        fa_clean, _ = rates(base, clean_good, bad)
        rows.append((method, 0, fa_clean, fa0, miss0, None, fit_s))
        print(f"{method}: fit + calibration {fit_s:.1f} s", file=sys.stderr, flush=True)
        for n in args.n:
            plan = plan_update(pool[:n], cal_files, seed=0)
            out = work / f"{method}-n{n}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            t1 = time.perf_counter()
            res = update_model(base, plan, out)
            up_s = time.perf_counter() - t1
            fa, miss = rates(out, good, bad)
            t2 = time.perf_counter()
            refit = get_detector(method, **params)
            fit_calibrated(refit, plan_calibration([*fit_files, *plan.add], val_good=list(plan.calibration)), tf,
                           target_fpr=args.target_fpr)
            refit_s = time.perf_counter() - t2
            rows.append((method, n, None, fa, miss, (res.add_seconds, up_s), refit_s))
            print(f"{method} N={n}: update {up_s:.1f} s, refit {refit_s:.1f} s", file=sys.stderr, flush=True)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"CPU: {cpu_model()}, {args.threads} torch threads; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"drift: RGB x {args.shift}, blur {args.blur} px; test: {len(good)} shifted good, {len(bad)} shifted "
          f"defective images; target false-alarm rate {args.target_fpr:g}")
    print()
    print("| method | N added | false alarms, clean good | false alarms, shifted good | misses, shifted defects "
          "| add images (s) | whole update (s) | full refit + calibration (s) |")
    print("|---|---|---|---|---|---|---|---|")
    pct = lambda v: "–" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    for m, n, fa_clean, fa, miss, up, refit in rows:
        add_s, whole = up if up is not None else (None, None)
        print(f"| {m} | {n if n else 'before (fit)'} | {pct(fa_clean)} | {pct(fa)} | {pct(miss)} | "
              f"{'–' if add_s is None else f'{add_s:.1f}'} | {'–' if whole is None else f'{whole:.1f}'} | {refit:.1f} |")
    print()
    print("whole update = load the model + add images + score the calibration images + calibrate + save; full refit "
          "= fit on the 30 original + the added images + score the calibration images + calibrate. Fit images are "
          "decoded in both.")


if __name__ == "__main__":
    main()
