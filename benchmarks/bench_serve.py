"""`flawmap serve` under load: throughput and latency at 1, 4, 16 concurrent clients versus the raw
predict time per image, PatchCore (default backbone) fitted on MVTec bottle train.

    python benchmarks/bench_serve.py --data ../shared/data/mvtec --category bottle

Fits (or loads, --model) PatchCore on the train images, calibrated on held-out train images, times
``flawmap predict``'s path per image in this process (decode + preprocess + forward, and the forward
alone), then starts ``flawmap serve`` as a subprocess and posts the bottle test images (PNG) from N
asyncio clients. Prints one table; the same run gives both sides, so machine load hits both alike.

    python benchmarks/bench_serve.py --model MODEL --log --clients 1 16

``--log``: a second server with an inspection log (``--log DIR``, default ``--keep-images anomalous``) runs
beside the first; every client level is measured on both, alternating, and the table gains the throughput
cost of the log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def fit_model(args: argparse.Namespace, out: Path) -> None:
    import torch

    from flawmap import get_detector
    from flawmap.data import Transform, load_image, scan_category
    from flawmap.metrics.thresholds import calibrate

    data = scan_category(args.data, args.category)
    tf = Transform(resize=256, crop=224)
    train = [s.path for s in data.train][: args.max_train]
    n_cal = max(2, len(train) // 10)
    x = torch.stack([tf(load_image(p)) for p in train])
    det = get_detector("patchcore").fit(x[:-n_cal])
    ref = det.predict(x[-n_cal:])
    cal = calibrate(ref.scores, ref.maps, target_fpr=0.01, source=f"{n_cal} held-out {args.category} train images")
    det.save(out, extra={"transform": tf.to_dict(), "calibration": cal.to_dict()})


def raw_times(model: Path, paths: list[Path], device: str | None) -> tuple[float, float]:
    """Median seconds per image of predict's path: (decode + preprocess + forward, forward alone)."""
    from flawmap.data import load_image
    from flawmap.deploy.predictor import open_predictor

    pred = open_predictor(model, device=device)
    pred.raw(pred.preprocess([load_image(paths[0])]))  # warm-up
    full, fwd = [], []
    for p in paths:
        t0 = time.perf_counter()
        x = pred.preprocess([load_image(p)])
        t1 = time.perf_counter()
        pred.raw(x)
        t2 = time.perf_counter()
        full.append(t2 - t0)
        fwd.append(t2 - t1)
    return statistics.median(full), statistics.median(fwd)


async def load(url: str, bodies: list[bytes], clients: int, n: int) -> tuple[float, list[float], int]:
    import httpx

    lat: list[float] = []
    errors = 0
    it = iter(range(n))

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in it:
            t0 = time.perf_counter()
            r = await c.post(url + "/v1/predict", content=bodies[i % len(bodies)], headers={"content-type": "image/png"})
            lat.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        return time.perf_counter() - t0, lat, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/mvtec")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--model", default=None, help="existing model folder (default: fit one into --work)")
    ap.add_argument("--work", default="benchmarks/results/serve_model", help="where the fitted model goes")
    ap.add_argument("--max-train", type=int, default=None, help="first N train images only (quick runs)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=24, help="requests per client level: max(this, 4 x clients)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    ap.add_argument("--log", action="store_true", help="also measure a server with an inspection log (same run)")
    ap.add_argument("--keep-images", default="anomalous", help="--keep-images of the logging server")
    ap.add_argument("--rounds", type=int, default=1, help="with --log: alternate the two servers this many times "
                    "per client level (the medians are compared)")
    args = ap.parse_args()
    if args.log:
        log_main(args)
        return

    import httpx

    from flawmap.data import scan_category

    model = Path(args.model or args.work)
    if args.model is None:
        t0 = time.perf_counter()
        fit_model(args, model)
        print(f"fitted PatchCore on {args.category} train in {time.perf_counter() - t0:.1f} s -> {model}")
    tests = [s.path for s in scan_category(args.data, args.category).test]
    bodies = [p.read_bytes() for p in tests]
    full, fwd = raw_times(model, tests[:12], args.device)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "flawmap.cli", "serve", str(model), "--port", str(port), "--max-batch", str(args.max_batch)]
    proc = subprocess.Popen(cmd + (["--device", args.device] if args.device else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        device = httpx.get(url + "/v1/model").json()["server"]["device"]
        asyncio.run(load(url, bodies, 2, 4))  # warm-up
        print(f"device {device}; images {len(tests)} ({args.category} test, PNG); cores {os.cpu_count()}")
        print(f"raw predict per image: {full * 1e3:.1f} ms (decode + preprocess + forward), forward alone "
              f"{fwd * 1e3:.1f} ms")
        print(f"{'clients':>7} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p50/raw':>8} {'errors':>6}")
        base = None
        for c in args.clients:
            seconds, lat, errors = asyncio.run(load(url, bodies, c, max(args.requests, 4 * c)))
            ips = len(lat) / seconds
            base = base or ips
            p50, p95, p99 = (float(np.percentile(lat, q)) * 1e3 for q in (50, 95, 99))
            print(f"{c:>7} {ips:>9.2f} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {p50 / (full * 1e3):>8.2f} {errors:>6}"
                  f"   throughput x{ips / base:.2f} of 1 client")
    finally:
        proc.terminate()
        proc.wait(30)


def start(model: Path, args: argparse.Namespace, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`flawmap serve MODEL` on a free port with ``extra`` flags; returns (process, URL) once ready."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "flawmap.cli", "serve", str(model), "--port", str(port), "--max-batch",
           str(args.max_batch), *(["--device", args.device] if args.device else []), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)


def writer_cost(bodies: list[bytes], n: int = 4000) -> tuple[float, float]:
    """The log's cost in this process, free of the HTTP noise of a shared machine: microseconds per row on the
    request path (``record``), and process CPU milliseconds per row until the writer thread committed them
    (every other image kept, as --keep-images anomalous keeps the flagged ones)."""
    import hashlib
    import tempfile

    from flawmap.serve.inspections import InspectionLog

    with tempfile.TemporaryDirectory(prefix="flawmap-bench-writer-") as d:
        log = InspectionLog(d, keep_images="anomalous").start()
        rows = []
        for i in range(n):
            data = bodies[i % len(bodies)] + i.to_bytes(4, "little")  # distinct images
            rows.append(({"time": time.time(), "request_id": f"{i:032x}", "name": f"{i}.png",
                          "image_sha256": hashlib.sha256(data).hexdigest(), "width": 900, "height": 900, "score": 1.0,
                          "normalized_score": 0.5, "verdict": "anomalous" if i % 2 else "ok", "threshold": 1.0,
                          "model_id": "0" * 16, "model_version": 1, "latency_ms": 1.0, "batch_size": 1,
                          "key_id": None}, data))
        c0, t0 = time.process_time(), time.perf_counter()
        for row, data in rows:
            log.record(row, data)
        rec = (time.perf_counter() - t0) / n
        while log.logged + log.dropped < n:
            time.sleep(0.005)
        cpu = (time.process_time() - c0) / n
        log.stop()
    return rec * 1e6, cpu * 1e3


def log_main(args: argparse.Namespace) -> None:
    """Throughput with and without the inspection log, same run, alternating per client level."""
    import tempfile

    import httpx

    from flawmap.data import scan_category

    model = Path(args.model or args.work)
    if args.model is None:
        fit_model(args, model)
    tests = [s.path for s in scan_category(args.data, args.category).test]
    bodies = [p.read_bytes() for p in tests]
    with tempfile.TemporaryDirectory(prefix="flawmap-bench-log-") as logdir:
        servers = {"no log": start(model, args, []),
                   "log": start(model, args, ["--log", logdir, "--keep-images", args.keep_images])}
        try:
            for _, url in servers.values():
                asyncio.run(load(url, bodies, 2, 4))  # warm-up
            print(f"images {len(tests)} ({args.category} test, PNG); cores {os.cpu_count()}; --keep-images "
                  f"{args.keep_images}; {args.rounds} round(s) per level")
            print(f"{'clients':>7} {'no log img/s':>13} {'log img/s':>10} {'cost':>7} {'log p50 ms':>11} {'errors':>6}")
            for c in args.clients:
                ips: dict[str, list[float]] = {k: [] for k in servers}
                p50, errors = [], 0
                for _ in range(args.rounds):
                    for name, (_, url) in servers.items():
                        seconds, lat, err = asyncio.run(load(url, bodies, c, max(args.requests, 4 * c)))
                        ips[name].append(len(lat) / seconds)
                        errors += err
                        if name == "log":
                            p50.append(float(np.percentile(lat, 50)) * 1e3)
                a, b = statistics.median(ips["no log"]), statistics.median(ips["log"])
                print(f"{c:>7} {a:>13.2f} {b:>10.2f} {100 * (1 - b / a):>6.1f}% {statistics.median(p50):>11.1f} "
                      f"{errors:>6}")
            card = httpx.get(servers["log"][1] + "/v1/model").json()["log"]
            print(f"log: {card['logged']} rows written, {card['dropped']} not logged")
            full, _ = raw_times(model, tests[:12], args.device)
            rec_us, cpu_ms = writer_cost(bodies)
            print(f"log writer in-process: record() {rec_us:.1f} us per image on the request path; {cpu_ms:.3f} ms "
                  f"CPU per row written = {100 * cpu_ms / (full * 1e3):.1f}% of the {full * 1e3:.1f} ms one image "
                  "costs to decode, preprocess and score alone")
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
