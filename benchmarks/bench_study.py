"""The whole study (`flawmap bench --study seed`) on real MVTec AD: wall time and feature-cache savings.

    python benchmarks/bench_study.py                       # the full study on bottle (hours on a CPU)
    python benchmarks/bench_study.py --max-train 20 --grid-points 2 --severities 3 --param spade.k=5 \\
        --param fastflow.epochs=2 --param riad.epochs=2      # a reduced version (about an hour on 2 busy cores)

Runs the same sweep twice in one invocation, so machine-load drift hits both alike:
  1. cold: empty feature cache (every backbone feature computed once, then reused inside the sweep),
  2. warm: a fresh results store (every run executes again) with the cache filled by run 1,
and optionally (--no-cache-baseline) 0. without any feature cache. The ratio cold / warm is what the
cache saves a repeated sweep; no-cache / cold what it saves inside one sweep. Each phase is a
`flawmap bench` subprocess (wall time includes start-up). Then the report is built once from the
cold results (timed separately). Writes <out>/bench_study.json and .csv and prints a table.

--grid-points K keeps the first K values of every grid, variants list and severity list of the
preset, --severities replaces the severity lists, --experiments keeps only the named experiments
(written to <out>/study.yaml); --skip-warm drops phase 2. The cache-savings measurement of docs/results.md:
    python benchmarks/bench_study.py --experiments patchcore_patch_coreset,padim_backbone_layers \
        --no-cache-baseline --skip-warm
--param /
--max-train / --methods / --threads are passed to `flawmap bench`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def reduced_study(src: Path, dst: Path, k: int | None, severities: list[int] | None = None) -> Path:
    raw = yaml.safe_load(src.read_text())
    if k:
        for exp in raw["experiments"].values():
            methods = exp.get("methods")
            if isinstance(methods, dict):
                for mc in methods.values():
                    if not mc:
                        continue
                    for key, vals in (mc.get("grid") or {}).items():
                        mc["grid"][key] = vals[:k]
                    if mc.get("variants"):
                        mc["variants"] = mc["variants"][:k]
            for c in exp.get("corruptions") or []:
                c["severities"] = c.get("severities", [1, 2, 3, 4, 5])[:k]
    if severities:
        for exp in raw["experiments"].values():
            for c in exp.get("corruptions") or []:
                c["severities"] = list(severities)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dst


def rows_of(out: Path) -> list[dict]:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        return [json.loads(r[0]) for r in con.execute("SELECT row_json FROM runs")]
    finally:
        con.close()


def cache_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors")) / 2**20 if path.is_dir() else 0.0


def phase(name: str, cmd: list[str], out: Path, cache: Path | None) -> dict:
    print(f"\n== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    (out.parent / f"{name}.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-4000:], sep="\n")
        raise SystemExit(f"{name}: flawmap bench failed (rc {res.returncode}); log in {out.parent / (name + '.log')}")
    rows = rows_of(out)
    s = lambda k: round(sum(float(r.get(k) or 0) for r in rows), 1)  # noqa: E731
    return {
        "phase": name, "wall_seconds": round(wall, 1), "runs": len(rows),
        "fit_seconds_sum": s("fit_seconds"),
        "predict_seconds_sum": round(sum(float(r.get("predict_seconds_per_image") or 0) * int(r.get("n_test") or 0)
                                         for r in rows), 1),
        "feature_seconds_sum": s("feature_seconds"),
        "cache_hits": int(s("feature_cache_hits")), "cache_misses": int(s("feature_cache_misses")),
        "cache_mib": round(cache_mib(cache), 1) if cache else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec"))
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--study", default="seed", help="study preset name or YAML (default: seed)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "study_seed"))
    ap.add_argument("--grid-points", type=int, default=None, help="keep the first K values of every grid/variants/severities")
    ap.add_argument("--severities", default=None, help="comma-separated severities replacing the preset's (e.g. 3)")
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--methods", default=None)
    ap.add_argument("--preset", default=None, help="flawmap preset for every experiment (e.g. fast-cpu)")
    ap.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-cache-baseline", action="store_true", help="also run the sweep without any feature cache")
    ap.add_argument("--experiments", default=None, help="comma-separated experiments of the study to keep (default: all)")
    ap.add_argument("--skip-warm", action="store_true", help="do not repeat the sweep with the filled cache")
    args = ap.parse_args()

    data = Path(args.data)
    if not (data / args.category).is_dir():
        raise SystemExit(f"MVTec category {data / args.category} not found (give --data)")
    sys.path.insert(0, str(REPO / "src"))
    from flawmap.bench.config import preset_path

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / "study.yaml").is_file():
            raise SystemExit(f"{out} exists and was not written by this script; give another --out")
        shutil.rmtree(out)  # a previous measurement: start from nothing (cold means cold)
    sev = [int(v) for v in args.severities.split(",")] if args.severities else None
    study = reduced_study(preset_path(args.study), out / "study.yaml", args.grid_points, sev)
    base = [sys.executable, "-m", "flawmap.cli", "--no-progress", "bench", "--study", str(study), "--data", str(data),
            "--categories", args.category, "--no-report"]
    for p in args.param:
        base += ["--param", p]
    for flag, v in (("--max-train", args.max_train), ("--methods", args.methods), ("--threads", args.threads),
                    ("--experiments", args.experiments), ("--preset", args.preset)):
        if v is not None:
            base += [flag, str(v)]
    cache = out / "feature_cache"
    results = []
    if args.no_cache_baseline:
        results.append(phase("no_cache", [*base, "--out", str(out / "no_cache"), "--no-feature-cache"],
                             out / "no_cache", None))
    results.append(phase("cold_cache", [*base, "--out", str(out / "cold"), "--feature-cache", str(cache)], out / "cold", cache))
    if not args.skip_warm:
        results.append(phase("warm_cache", [*base, "--out", str(out / "warm"), "--feature-cache", str(cache)],
                             out / "warm", cache))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flawmap.cli", "report", str(out / "cold"), "-o", str(out / "report")], check=True,
                   capture_output=True)
    report_s = time.perf_counter() - t0

    by = {r["phase"]: r for r in results}
    summary = {"category": args.category, "study": str(study), "args": vars(args), "phases": results,
               "report_seconds": round(report_s, 1), "report": str(out / "report" / "index.html")}
    cold = by["cold_cache"]
    if "warm_cache" in by:
        summary["cold_over_warm_wall"] = round(cold["wall_seconds"] / max(by["warm_cache"]["wall_seconds"], 1e-9), 2)
    if "no_cache" in by:
        summary["no_cache_over_cold_wall"] = round(by["no_cache"]["wall_seconds"] / cold["wall_seconds"], 2)
    cols = list(results[0])
    widths = [max(len(c), *(len(str(r[c])) for r in results)) for c in cols]
    print("\n" + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in results:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    ratios = [f"{name} = {summary[key]:.2f}x" for name, key in
              (("cold / warm", "cold_over_warm_wall"), ("no cache / cold", "no_cache_over_cold_wall")) if key in summary]
    print(f"\nfeature cache wall-time ratios: {'; '.join(ratios) or 'none (one phase)'}; cold run: "
          f"{cold['feature_seconds_sum']:.0f} s of backbone compute on misses; "
          f"report built in {report_s:.1f} s -> {summary['report']}")
    (out / "bench_study.json").write_text(json.dumps(summary, indent=2, default=str))
    with open(out / "bench_study.csv", "w") as f:
        f.write(",".join(cols) + "\n")
        for r in results:
            f.write(",".join(str(r[c]) for c in cols) + "\n")


if __name__ == "__main__":
    main()
