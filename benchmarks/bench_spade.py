"""SPADE's pixel search on MVTec AD bottle: seconds per test image, before / after, same run, same features.

    python benchmarks/bench_spade.py --data ../shared/data/mvtec --category bottle --k 50 --images 12 --threads 1

One SPADE fit (paper K, kappa); the test features are extracted once, then for each of --images test
images (evenly spaced over the test split) the searches run interleaved, so load noise hits all alike:

  old      the pixel search as it was before ``components.gallery_knn`` (kept here only, verbatim: fp32
           addmm per neighbour image, fresh output each time, running min / top-kappa)
  dense    ``GalleryIndex(bf16_filter=False)``: the library's fp32 path (CUDA, CPUs without fast bf16)
  library  ``det.pixel_scores``: what SPADE uses on this machine (the bf16 filter + fp32 check where the
           CPU has AMX / AVX512-BF16)

Every result is compared with a float64 brute force (--check images). --profile adds where the time of
``det.predict`` goes (backbone, image kNN, pixel search, map), old versus library, and a torch.profiler
table of one library predict. Medians; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from flawmap import get_detector
from flawmap.components.anomaly_map import anomaly_map
from flawmap.components.gallery_knn import GalleryIndex
from flawmap.components.knn import knn
from flawmap.data import Transform, load_split, scan_category


def _old_pixel_scores(gallery: torch.Tensor, g_sq: torch.Tensor, queries: torch.Tensor, neighbours: torch.Tensor,
                      kappa: int, chunk_size: int = 1 << 24) -> torch.Tensor:
    """The search before this change (SPADE.pixel_scores at f7d0571), for the comparison only."""
    per_image = gallery.shape[1]
    imgs = max(1, chunk_size // max(1, per_image * len(queries)))
    q_step = max(1, chunk_size // (imgs * per_image))
    out = []
    for q0 in range(0, len(queries), q_step):
        q = queries[q0:q0 + q_step]
        best: torch.Tensor | None = None
        for s in range(0, len(neighbours), imgs):
            nb = neighbours[s:s + imgs]
            bank, bank_sq = (gallery[nb[0]], g_sq[nb[0]]) if len(nb) == 1 else \
                (gallery[nb].flatten(0, 1), g_sq[nb].flatten())
            part = torch.addmm(bank_sq.unsqueeze(0), q, bank.T, beta=1.0, alpha=-2.0)
            if kappa == 1:
                part = part.min(dim=1, keepdim=True).values
                best = part if best is None else torch.minimum(best, part)
            else:
                part = torch.topk(part, min(kappa, part.shape[1]), dim=1, largest=False, sorted=False).values
                if best is not None:
                    part = torch.cat([best, part], dim=1)
                    part = torch.topk(part, min(kappa, part.shape[1]), dim=1, largest=False, sorted=False).values
                best = part
        assert best is not None
        d2 = best.add_(q.pow(2).sum(dim=1, keepdim=True)).clamp_(min=0.0)
        out.append(d2.sqrt_().mean(dim=1))
    return torch.cat(out)


def _reference(gallery: torch.Tensor, queries: torch.Tensor, neighbours: torch.Tensor, kappa: int) -> torch.Tensor:
    """float64 brute force by the definition."""
    rows = gallery[neighbours].flatten(0, 1).double()
    q = queries.double()
    return torch.cat([torch.sort(torch.cdist(q[s:s + 256], rows), dim=1).values[:, :kappa].mean(1)
                      for s in range(0, len(q), 256)])


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _profile(det, images: torch.Tensor, old) -> None:
    """Per-stage seconds of predict for each test image (old search vs the library's), then torch.profiler."""
    stages: dict[str, list[float]] = {}

    def add(name: str, s: float) -> None:
        stages.setdefault(name, []).append(s)

    with torch.no_grad():
        for x in images.split(1):
            feats, s = _timed(lambda: det._features(det._backbone_features(x)))
            add("backbone + pyramid", s)
            f, pyr = feats
            (dist, nn_idx), s = _timed(lambda: knn(f, det.train_image_features_, det.k_))
            add("image kNN (K nearest train images)", s)
            q = pyr.reshape(-1, pyr.shape[-1]).contiguous()
            _, s = _timed(lambda: old(q, nn_idx[0]))
            add("pixel search, old", s)
            patch, s = _timed(lambda: det.pixel_scores(q, nn_idx[0]))
            add("pixel search, library", s)
            _, s = _timed(lambda: anomaly_map(patch.view(1, *pyr.shape[1:3]), tuple(x.shape[-2:]), det.sigma))
            add("upsample + Gaussian map", s)
    print("\nstage (median s per test image)")
    for name, v in stages.items():
        print(f"  {name:40s} {statistics.median(v):8.3f}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        det.predict(images[:1])
    print("\ntorch.profiler, one library predict (top ops by self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/mvtec")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--backbone", default="efficientnet_lite2")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--kappa", type=int, default=1)
    ap.add_argument("--images", type=int, default=12, help="test images timed (evenly spaced)")
    ap.add_argument("--check", type=int, default=3, help="of those, compared with a float64 brute force")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tf = Transform(resize=256, crop=224)
    data = scan_category(args.data, args.category)
    train, test = load_split(data, "train", tf, keep_uint8=True), load_split(data, "test", tf)
    det = get_detector("spade", backbone=args.backbone, k=args.k, kappa=args.kappa, device="cpu")
    _, fit_s = _timed(lambda: det.fit(train.images))
    gallery = det.train_pixel_features_
    dense = GalleryIndex(gallery, bf16_filter=False)
    g_sq = gallery.pow(2).sum(dim=2)

    def old(q, nb):
        return _old_pixel_scores(gallery, g_sq, q, nb, det.kappa)

    pick = torch.linspace(0, len(test) - 1, args.images).round().long()
    x = test.images[pick]
    with torch.no_grad():
        f, pyr = det._features(det._backbone_features(x, batch_size=8))
        _, nn_idx = knn(f, det.train_image_features_, det.k_)
    load0 = os.getloadavg()
    times: dict[str, list[float]] = {"old": [], "dense": [], "library": []}
    worst: dict[str, float] = {}
    for i in range(len(x)):
        q = pyr[i].reshape(-1, pyr.shape[-1]).contiguous()
        ref = _reference(gallery, q, nn_idx[i], det.kappa) if i < args.check else None
        for name, fn in (("old", old), ("dense", lambda q, nb: dense.search(q, nb, det.kappa).mean(1)),
                         ("library", det.pixel_scores)):
            out, s = _timed(lambda: fn(q, nn_idx[i]))
            times[name].append(s)
            if ref is not None:
                rel = float(((out.double() - ref).abs() / ref.clamp(min=1e-6)).max())
                worst[name] = max(worst.get(name, 0.0), rel)
        print(f"image {i}: " + "  ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()), flush=True)
    load1 = os.getloadavg()
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"\n{args.category}: {len(train)} train, K={det.k_}, kappa={det.kappa}, grid {det.grid_}, "
          f"{gallery.shape[2]} channels, {len(x)} test images; fit {fit_s:.1f} s; torch threads "
          f"{torch.get_num_threads()}; library path: {'bf16 filter' if det._index.filter else 'dense fp32'}")
    print(f"load average (1 min) {load0[0]:.2f} before, {load1[0]:.2f} after")
    print("search   median s/image   vs old   max rel. diff to float64 brute force")
    for n in times:
        print(f"{n:8s} {med[n]:14.3f}   {med['old'] / med[n]:6.2f}x   {worst.get(n, float('nan')):.1e}")
    if args.profile:
        _profile(det, x[: min(4, len(x))], old)


if __name__ == "__main__":
    main()
