"""Benchmark PatchCore's two hot spots on a real feature bank: the greedy coreset and 1-NN scoring.

Coreset: exact fast path (``greedy_coreset_fast``) for several ratios and projection dims; the
textbook loop is timed for ``--naive-iters`` steps and extrapolated to k steps (its cost per step is
constant), and the fast picks are checked against those first naive picks.
kNN: the bank is a 10 % coreset of images [0, --train-images) and the queries are the patches of
the remaining images (784 per image); brute force ``knn`` versus ``NearestNeighborIndex`` per image
at predict batch sizes 1 and 8, with an exactness check. With ``--images`` (a tensor file of
(N, 3, 224, 224) images, e.g. bottle224.pt with key "tr"), also the backbone time per image, and with
``--patchcore N`` the whole PatchCore fit and predict (brute-force kNN vs the automatic index).

    nice -n 10 python benchmarks/bench_coreset_knn.py --bank /tmp/pc/bank.pt --images /tmp/pc/bottle224.pt \
        --patchcore 32

Times are medians over --repeat runs: wall (perf_counter) and CPU (process_time) seconds, with the
1-minute load average, as other jobs share the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import numpy as np
import torch

from flawmap.components import coreset as cs
from flawmap.components import knn as kn


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of fn() over repeat runs, and the last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def row(name: str, setting: str, wall: float, cpu: float, note: str = "") -> None:
    print(f"{name:<22} {setting:<34} {wall:>10.3f} {cpu:>10.3f}  load {os.getloadavg()[0]:4.1f}  {note}", flush=True)


def bench_coreset(bank: torch.Tensor, ratios: list[float], dims: list[int], repeat: int, naive_iters: int) -> None:
    n = len(bank)
    for dim in dims:
        psi = cs.random_projection(bank, dim, 0).numpy()  # (N, d*)
        w, c, naive = timed(lambda: cs.greedy_coreset_naive(psi, naive_iters, 0), 1)
        for ratio in ratios:
            k = max(1, round(ratio * n))
            row("coreset naive (est.)", f"d*={dim} ratio={ratio} k={k}", w / naive_iters * k, c / naive_iters * k,
                f"from {naive_iters} steps")
            w2, c2, sel = timed(lambda: cs.greedy_coreset_fast(psi, k, 0), repeat)
            ok = np.array_equal(sel[:min(k, naive_iters)], naive[:min(k, naive_iters)])
            row("coreset fast", f"d*={dim} ratio={ratio} k={k}", w2, c2, f"first picks == naive: {ok}")


def bench_knn(bank: torch.Tensor, train_images: int, per_image: int, batches: list[int], repeat: int) -> None:
    train = bank[:train_images * per_image]
    queries = bank[train_images * per_image:]
    w, c, idx = timed(lambda: cs.greedy_coreset(train, 0.1, projection_dim=128, seed=0), 1)
    memory = train[idx].contiguous()
    row("knn bank (coreset)", f"{len(train)} -> {len(memory)} x {memory.shape[1]}", w, c)
    n_img = len(queries) // per_image
    w, c, index = timed(lambda: kn.NearestNeighborIndex(memory), repeat)
    row("knn index build", f"{len(index.c)} clusters", w, c)
    auto = kn._AUTO_MIN_BANK
    kn._AUTO_MIN_BANK = 1 << 62  # brute force only
    try:
        for bs in batches:
            chunks = [queries[i * per_image:(i + bs) * per_image] for i in range(0, n_img - bs + 1, bs)]
            for name, fn in (("knn brute force", lambda q: kn.knn(q, memory, 1)),
                             ("knn index", lambda q: index.search(q, 1))):
                w, c, _ = timed(lambda: [fn(q) for q in chunks], repeat)
                imgs = len(chunks) * bs
                row(name, f"batch={bs}, per image ({imgs} imgs)", w / imgs, c / imgs, f"threads={torch.get_num_threads()}")
        d0, i0 = kn.knn(queries, memory, 9)
    finally:
        kn._AUTO_MIN_BANK = auto
    d1, i1 = index.search(queries, 9)
    tie = (i0 != i1) & ((d0 - d1).abs() < 1e-3 * d0.clamp(min=1))
    print(f"exactness vs brute force, k=9 on {len(queries)} queries: max |d diff| {(d0 - d1).abs().max().item():.2e}, "
          f"index mismatches {(i0 != i1).sum().item()} (of which at float-tied distances: {tie.sum().item()})")


def bench_backbone(path: str, key: str, repeat: int) -> None:
    from flawmap.detectors.patchcore import PatchCore

    images = torch.load(path, weights_only=False)[key][:32]  # a local, trusted tensor file
    det = PatchCore()
    det._validate_params()
    det._setup()
    with torch.no_grad():
        w, c, _ = timed(lambda: [det._embed(det._backbone(images[i:i + 8])) for i in range(0, len(images), 8)], repeat)
    row("backbone + embed", f"batch=8, per image ({len(images)} imgs)", w / len(images), c / len(images),
        f"threads={torch.get_num_threads()}")


def bench_patchcore(path: str, n_test: int) -> None:
    """Whole PatchCore: fit (backbone + embedding + coreset) on all "tr" images, backbone-only time on
    the same images, and predict on n_test "te" images with brute-force kNN versus the auto index."""
    from flawmap.components.features import extract_features
    from flawmap.detectors.patchcore import PatchCore

    data = torch.load(path, weights_only=False)  # a local, trusted tensor file
    train, test = data["tr"], data["te"][:n_test]
    det = PatchCore()
    det._validate_params()
    det._setup()
    w, c, _ = timed(lambda: det._embed(extract_features(det._backbone, train, batch_size=8)), 1)
    row("patchcore backbone+emb", f"{len(train)} train images", w, c)
    w, c, _ = timed(lambda: det.fit(train), 1)
    row("patchcore fit", f"{len(train)} train images, ratio 0.1", w, c, f"bank {tuple(det.memory_bank_.shape)}")
    det.predict(test[:8])  # warm-up; records the bank for the automatic index
    auto = kn._AUTO_MIN_BANK
    for name, thr in (("patchcore predict brute", 1 << 62), ("patchcore predict index", auto)):
        kn._AUTO_MIN_BANK = thr
        w, c, _ = timed(lambda: det.predict(test), 1)
        row(name, f"per image ({len(test)} images, batch 8)", w / len(test), c / len(test))
    kn._AUTO_MIN_BANK = auto


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", default="/tmp/pc/bank.pt", help="torch tensor (N, D) of patch features")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1, 0.25])
    ap.add_argument("--dims", type=int, nargs="+", default=[128], help="projection dims d* of the coreset")
    ap.add_argument("--naive-iters", type=int, default=300, help="naive greedy steps timed (extrapolated to k)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=180)
    ap.add_argument("--per-image", type=int, default=784, help="patches per image (28 x 28)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="predict batch sizes (images)")
    ap.add_argument("--images", help="tensor file with images (N, 3, 224, 224) for the backbone timing")
    ap.add_argument("--images-key", default="tr")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (PatchCore default: 2 here)")
    ap.add_argument("--patchcore", type=int, default=0, metavar="N_TEST",
                    help="with --images: also time PatchCore fit and predict on N_TEST test images")
    ap.add_argument("--skip", nargs="*", default=[], choices=["coreset", "knn", "backbone"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bank = torch.load(args.bank).float()
    print(f"bank {tuple(bank.shape)}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"{'task':<22} {'setting':<34} {'wall s':>10} {'cpu s':>10}")
    if "coreset" not in args.skip:
        bench_coreset(bank, args.ratios, args.dims, args.repeat, args.naive_iters)
    if "knn" not in args.skip:
        bench_knn(bank, args.train_images, args.per_image, args.batches, args.repeat)
    if args.images and "backbone" not in args.skip:
        bench_backbone(args.images, args.images_key, args.repeat)
    if args.images and args.patchcore:
        bench_patchcore(args.images, args.patchcore)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
