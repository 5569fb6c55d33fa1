"""SPADE and PaDiM on MVTec AD: quality, speed against a naive reference of the same maths, memory.

    nice -n 10 python benchmarks/bench_spade_padim.py --root /work/shared/data/mvtec --category bottle \
        --out /tmp/bench_spade_padim.csv

Stages (all by default):
  padim     fit + predict per n_features value (--padim-d), metrics; peak RSS after the PaDiM runs
            (ru_maxrss is a process-wide high-water mark, so PaDiM runs first: it includes the data).
  padim-naive  the same maths on the same embeddings, written the obvious way (all train embeddings
            in RAM, np.cov + np.linalg.inv per position, one Mahalanobis per test pixel); maps compared.
            Two rows: fitting the Gaussians (total seconds, in the per-image columns) and scoring.
  spade     fit + predict (K, kappa from --k/--kappa), metrics.
  spade-naive  the same maths on the same features for --naive-images test images: per test image, the
            K nearest images by a full sort, then per neighbour the exact pairwise distances
            (torch.cdist without the matmul shortcut) and a running kappa-smallest; maps compared.
  wrn50-memory  PaDiM wide_resnet50_2 (random weights: memory does not depend on them), d=550, in a
            child process on --wrn-images images: its own peak RSS.

Times are wall-clock seconds per test image; "maths" times start from the extracted features.
The quality figures do not depend on the machine; the times do (shared CPUs: see the load average).
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flawmap import get_detector
from flawmap.components.gaussian import StreamingGaussian, inverse_cholesky_, mahalanobis
from flawmap.components.knn import knn
from flawmap.data import Transform, load_split, scan_category
from flawmap.metrics.evaluate import evaluate

log = logging.getLogger("bench_spade_padim")
FIELDS = ("method", "setting", "image_auroc", "pixel_auroc", "aupro", "fit_s", "predict_s_per_img",
          "maths_fast_s_per_img", "maths_naive_s_per_img", "speedup", "max_abs_diff", "peak_rss_gib", "n_imgs")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def metrics(split, res) -> dict[str, float | None]:
    m = evaluate(split.labels, res.scores, split.masks.numpy(), res.maps)
    return {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")}


# ---- PaDiM ----------------------------------------------------------------------------------------
def padim_embeddings(det, images: torch.Tensor, bs: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, d, h, w) embeddings of a fitted PaDiM (all in RAM: the benchmark's reference only)."""
    with torch.no_grad():
        return torch.cat([det._embed(det._backbone(images[i:i + bs])).cpu() for i in range(0, len(images), bs)])


def padim_naive_fit(train_emb: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per position: mean, np.cov + eps I, np.linalg.inv -> mu (h, w, d), Sigma^-1 (h, w, d, d)."""
    n, d, h, w = train_emb.shape
    mu, prec = np.empty((h, w, d)), np.empty((h, w, d, d))
    for i in range(h):
        for j in range(w):
            x = train_emb[:, :, i, j]
            mu[i, j] = x.mean(axis=0)
            prec[i, j] = np.linalg.inv(np.cov(x, rowvar=False) + eps * np.eye(d))
    return mu, prec


def padim_naive_score(test_emb: np.ndarray, mu: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """Per test image and position: sqrt(delta^T Sigma^-1 delta) -> (B, h, w)."""
    b_, d, h, w = test_emb.shape
    out = np.empty((b_, h, w))
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                delta = test_emb[b, :, i, j] - mu[i, j]
                out[b, i, j] = np.sqrt(delta @ prec[i, j] @ delta)
    return out


def padim_fast_fit(train_emb: torch.Tensor, eps: float, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The detector's path: streaming Gaussian, inverse Cholesky -> mu (P, d), L^-1 (P, d, d)."""
    n, d, h, w = train_emb.shape
    acc = StreamingGaussian(h * w, d)
    for i in range(0, n, bs):
        acc.update(train_emb[i:i + bs].flatten(2).permute(2, 0, 1))
    return acc.mean, inverse_cholesky_(acc.covariance_(eps))


def padim_fast_score(test_emb: torch.Tensor, mean: torch.Tensor, inv_chol: torch.Tensor, bs: int) -> torch.Tensor:
    """The detector's batched Mahalanobis -> (B, h, w)."""
    out = [mahalanobis(test_emb[i:i + bs].flatten(2).permute(2, 0, 1), mean, inv_chol).T
           for i in range(0, len(test_emb), bs)]
    return torch.cat(out).reshape(len(test_emb), *test_emb.shape[2:])


def run_padim(args, train, test, rows) -> None:
    for d in args.padim_d:
        det = get_detector("padim", backbone=args.backbone, n_features=d, batch_size=args.batch_size, device="cpu")
        t0 = time.perf_counter()
        det.fit(train.images)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = det.predict(test.images)
        pred_s = (time.perf_counter() - t0) / len(test)
        row = {"method": "padim", "setting": f"{args.backbone} d={len(det.channel_idx_)} grid={det.grid_}",
               **metrics(test, res), "fit_s": fit_s, "predict_s_per_img": pred_s, "n_imgs": len(test)}
        rows.append(row)
        log.info("%s", row)
    rows[-1]["peak_rss_gib"] = peak_rss_gib()  # after the largest setting (ru_maxrss only grows)
    args._padim_last = det


def run_padim_naive(args, train, test, rows) -> None:
    det = args._padim_last
    tr, te = padim_embeddings(det, train.images, args.batch_size), padim_embeddings(det, test.images, args.batch_size)
    setting = f"{len(tr)} train, d={tr.shape[1]}, grid={list(tr.shape[2:])}"
    t0 = time.perf_counter()
    mean, inv_chol = padim_fast_fit(tr, det.eps, args.batch_size)
    t1 = time.perf_counter()
    fast = padim_fast_score(te, mean, inv_chol, args.batch_size)
    t2 = time.perf_counter()
    mu, prec = padim_naive_fit(tr.double().numpy(), det.eps)
    t3 = time.perf_counter()
    naive = padim_naive_score(te.double().numpy(), mu, prec)
    t4 = time.perf_counter()
    diff = float(np.abs(fast.numpy() - naive).max())
    rows.append({"method": "padim-maths-fit", "setting": f"Gaussians, total s: {setting}", "maths_fast_s_per_img": t1 - t0,
                 "maths_naive_s_per_img": t3 - t2, "speedup": (t3 - t2) / (t1 - t0), "n_imgs": len(tr)})
    rows.append({"method": "padim-maths-score", "setting": f"Mahalanobis maps: {setting}",
                 "maths_fast_s_per_img": (t2 - t1) / len(te), "maths_naive_s_per_img": (t4 - t3) / len(te),
                 "speedup": (t4 - t3) / (t2 - t1), "max_abs_diff": diff, "n_imgs": len(te)})
    log.info("%s %s (max |naive| %.3f)", rows[-2], rows[-1], float(np.abs(naive).max()))


# ---- SPADE ----------------------------------------------------------------------------------------
def spade_naive(det, f: torch.Tensor, pyr: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """From features f (B, C_img), pyr (B, h, w, C): scores (B,) and patch maps (B, h, w) by the definition,
    image by image, neighbour by neighbour, with exact pairwise differences."""
    f_tr, g_tr = det.train_image_features_, det.train_pixel_features_  # (N, C_img), (N, P, C)
    scores, maps = [], []
    h, w = pyr.shape[1:3]
    for fy, py in zip(f, pyr):
        q = py.reshape(h * w, -1)
        d_img = torch.cdist(fy[None], f_tr, compute_mode="donot_use_mm_for_euclid_dist")[0]  # (N,)
        order = torch.argsort(d_img)[:det.k_]
        scores.append(float(d_img[order].mean()))
        best = torch.full((h * w, det.kappa), float("inf"))
        for j in order.tolist():
            d = torch.cdist(q, g_tr[j], compute_mode="donot_use_mm_for_euclid_dist")  # (P, P)
            best = torch.sort(torch.cat([best, d], dim=1), dim=1).values[:, :det.kappa]
        maps.append(best.mean(dim=1).reshape(h, w).numpy())
    return np.array(scores), np.stack(maps)


def run_spade(args, train, test, rows) -> None:
    det = get_detector("spade", backbone=args.backbone, k=args.k, kappa=args.kappa, batch_size=args.batch_size,
                       device="cpu")
    t0 = time.perf_counter()
    det.fit(train.images)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = det.predict(test.images)
    pred_s = (time.perf_counter() - t0) / len(test)
    rows.append({"method": "spade", "setting": f"{args.backbone} K={det.k_} kappa={det.kappa} grid={det.grid_}",
                 **metrics(test, res), "fit_s": fit_s, "predict_s_per_img": pred_s, "n_imgs": len(test),
                 "peak_rss_gib": peak_rss_gib()})  # process-wide: includes the PaDiM runs before it
    log.info("%s", rows[-1])
    if "spade-naive" not in args.stages or args.naive_images <= 0:
        return
    # both sides from the same features (backbone excluded from both timings)
    x = test.images[test.labels == 1][: args.naive_images]
    with torch.no_grad():
        f, pyr = det._features(det._backbone(x))
        t0 = time.perf_counter()
        dist, nn_idx = knn(f, det.train_image_features_, det.k_)
        fast = torch.stack([det.pixel_scores(p.reshape(-1, p.shape[-1]).contiguous(), i) for p, i in zip(pyr, nn_idx)])
        fast_s = (time.perf_counter() - t0) / len(x)
    t0 = time.perf_counter()
    naive_scores, naive_maps = spade_naive(det, f, pyr)
    naive_s = (time.perf_counter() - t0) / len(x)
    diff = float(np.abs(fast.reshape(naive_maps.shape).numpy() - naive_maps).max())
    sdiff = float(np.abs(dist.mean(dim=1).numpy() - naive_scores).max())
    rows.append({"method": "spade-maths", "setting": f"pixel search K={det.k_} kappa={det.kappa} (score diff {sdiff:.2e})",
                 "maths_fast_s_per_img": fast_s, "maths_naive_s_per_img": naive_s, "speedup": naive_s / fast_s,
                 "max_abs_diff": diff, "n_imgs": len(x)})
    log.info("%s (max naive %.3f)", rows[-1], float(naive_maps.max()))


# ---- WRN50 memory ---------------------------------------------------------------------------------
def _wrn_child(n: int, size: int, queue) -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    det = get_detector("padim", backbone="wide_resnet50_2", weights="random", n_features=550, batch_size=8, device="cpu")
    t0 = time.perf_counter()
    det.fit(x)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det.predict(x[:8])
    queue.put((fit_s, (time.perf_counter() - t0) / 8, peak_rss_gib(), list(det.grid_)))


def run_wrn_memory(args, rows) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_wrn_child, args=(args.wrn_images, args.crop, queue))
    proc.start()
    fit_s, pred_s, rss, grid = queue.get()
    proc.join()
    rows.append({"method": "padim", "setting": f"wide_resnet50_2 (random weights) d=550 grid={grid}, {args.wrn_images} imgs",
                 "fit_s": fit_s, "predict_s_per_img": pred_s, "peak_rss_gib": rss, "n_imgs": 8})
    log.info("%s", rows[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/work/shared/data/mvtec")
    p.add_argument("--category", default="bottle")
    p.add_argument("--backbone", default="efficientnet_lite2")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--padim-d", type=int, nargs="+", default=[100, 192], help="PaDiM n_features values, ascending")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--kappa", type=int, default=1)
    p.add_argument("--naive-images", type=int, default=2, help="test images for the SPADE naive timing")
    p.add_argument("--wrn-images", type=int, default=24)
    p.add_argument("--max-train", type=int, default=None, help="smoke runs: only the first N train images")
    p.add_argument("--test-every", type=int, default=1, help="smoke runs: every n-th test image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stages", nargs="+", default=["padim", "padim-naive", "spade", "spade-naive", "wrn50-memory"])
    p.add_argument("--out", required=True, help="CSV file to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)

    data = scan_category(args.root, args.category)
    tf = Transform(resize=args.resize, crop=args.crop)
    train, test = load_split(data, "train", tf), load_split(data, "test", tf)
    if args.max_train:
        train.images = train.images[: args.max_train]
    if args.test_every > 1:
        keep = slice(None, None, args.test_every)
        test.images, test.labels, test.masks = test.images[keep], test.labels[keep], test.masks[keep]
        test.paths, test.defect_types = test.paths[keep], test.defect_types[keep]
    log.info("%s: %d train, %d test images at %s", args.category, len(train), len(test), tf.output_size)
    rows: list[dict] = []
    if "padim" in args.stages:
        run_padim(args, train, test, rows)
        if "padim-naive" in args.stages:
            run_padim_naive(args, train, test, rows)
    if "spade" in args.stages:
        run_spade(args, train, test, rows)
    if "wrn50-memory" in args.stages:
        run_wrn_memory(args, rows)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = {k: max(len(k), *(len(fmt(r.get(k))) for r in rows)) for k in FIELDS}
    print(" | ".join(k.ljust(widths[k]) for k in FIELDS))
    for r in rows:
        print(" | ".join(fmt(r.get(k)).ljust(widths[k]) for k in FIELDS))
    print(f"CSV: {out}  ({args.category}, {args.backbone}, resize {args.resize} crop {args.crop}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f} at the end; {' '.join(sys.argv)})")


if __name__ == "__main__":
    main()
