"""Cost of a preset's PatchCore against the paper PatchCore: fit seconds, predict ms per image, bank MB, peak RSS.

    python benchmarks/bench_preset_cost.py --preset accurate --data ../shared/data/mvtec --category bottle

Both detectors are fitted and timed in the same process, interleaved (paper, preset, paper, preset, ...)
for ``--repeats`` rounds so that machine load hits both alike; the table reports medians and the ratio
preset / paper, with the 1-minute load average. The preset's preprocessing is used for both, so only the
hyperparameters differ. Peak RSS is the growth of the process's maximum resident size during the preset's
first fit (``resource.getrusage``; the paper runs first, so it is the extra memory the preset needs).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch

from flawmap import get_detector
from flawmap.data import load_split, scan_category
from flawmap.presets import preset_params, preset_transform


def bank_mb(det: object) -> float:
    tensors = det.state_tensors()  # type: ignore[attr-defined]
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="accurate")
    ap.add_argument("--data", default="../shared/data/mvtec")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--max-train", type=int, default=30)
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--coreset", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tf = preset_transform(args.preset, "patchcore")
    data = scan_category(args.data, args.category)
    train = load_split(data, "train", tf, keep_uint8=True).images[:args.max_train]
    test = load_split(data, "test", tf).images[:args.n_test]
    common = {"coreset_ratio": args.coreset}
    configs = {"paper": common, args.preset: preset_params(args.preset, "patchcore", common)}
    times: dict[str, dict[str, list[float]]] = {k: {"fit": [], "ms": []} for k in configs}
    rss: dict[str, float] = {}
    mb: dict[str, float] = {}
    loads = []
    for _ in range(args.repeats):
        for name, params in configs.items():
            loads.append(os.getloadavg()[0])
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            det = get_detector("patchcore", **params).fit(train)
            times[name]["fit"].append(time.perf_counter() - t0)
            rss.setdefault(name, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
            t0 = time.perf_counter()
            det.predict(test, batch_size=8)
            times[name]["ms"].append((time.perf_counter() - t0) / len(test) * 1000)
            mb[name] = bank_mb(det)
    med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
    p = med["paper"]
    print(f"{args.category} {tuple(test.shape[-2:])}, {len(train)} train, {len(test)} test images, coreset {args.coreset}, "
          f"{args.threads} thread(s), {args.repeats} interleaved rounds, load {min(loads):.1f}-{max(loads):.1f}")
    print("| config | fit s | predict ms/image | x paper (predict) | state MB | peak RSS growth MB |")
    print("|---|---|---|---|---|---|")
    for name in configs:
        m = med[name]
        print(f"| {name} | {m['fit']:.1f} ({m['fit'] / p['fit']:.1f}x) | {m['ms']:.0f} | {m['ms'] / p['ms']:.1f}x | "
              f"{mb[name]:.1f} | {rss[name]:.0f} |")


if __name__ == "__main__":
    main()
