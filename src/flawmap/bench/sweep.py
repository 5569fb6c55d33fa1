"""The sweep driver behind ``flawmap bench``: expand a (study) config, skip finished runs, execute
the rest, store each finished run atomically, export CSV (and Parquet), optionally write a report.

Only this driver writes: ``<out>/results.sqlite`` (one transaction per run: row, details, tags),
``<out>/artifacts/<run_key>/`` (gallery PNGs, written to a temporary folder and renamed before
the row is stored, so a stored run always has its pictures), ``<out>/artifacts/corruptions/``
(example pictures of the corruptions, ``flawmap.bench.pictures``), ``<out>/results.csv`` (+ ``.parquet``), all
through ``flawmap.io``. It holds ``<out>/.flawmap-bench.lock`` for the whole sweep (a second sweep on
the same folder stops with OutputError), and stores a fingerprint of each run's dataset files with
the run: a stored run whose dataset changed since is run again and its row replaced.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data import scan_category
from ..errors import ConfigError
from ..io import atomic_replace_dir, check_writable, exclusive_lock
from ..viz.text import format_table, format_value
from .config import StudyConfig, validate_specs
from .executors import LocalExecutor, RayExecutor, RunFailure
from .pictures import ARTIFACTS, corruption_pictures
from .runner import FIRST_COLUMNS, RunOptions, RunOutput, RunSpec, group_specs
from .store import ResultStore, write_csv, write_parquet

log = logging.getLogger(__name__)

#: held by the sweep driver for the whole sweep: a second `flawmap bench` on the same folder stops at once
LOCK_NAME = ".flawmap-bench.lock"


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    n_specs: int
    n_skipped: int  # already finished before this call
    n_ran: int
    failures: list[RunFailure] = field(default_factory=list)
    csv_path: Path | None = None
    parquet_path: Path | None = None
    seconds: float = 0.0


def write_artifacts(out: Path, run_key: str, files: dict[str, bytes]) -> Path | None:
    """Write a run's artifact files into <out>/artifacts/<run_key>/ atomically (temp folder + rename)."""
    if not files:
        return None
    final = out / ARTIFACTS / run_key

    def build(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    atomic_replace_dir(final, build)
    return final


def describe(spec: RunSpec) -> str:
    params = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in spec.params.items() if k != "device")
    corr = f" [{spec.corruption} s{spec.severity} p={spec.p}]" if spec.corruption else ""
    return f"{spec.method} on {spec.category}" + (f" ({params})" if params else "") + corr


def unavailable_weights(specs: list[RunSpec]) -> dict[tuple[str, str], str]:
    """(backbone, weights) pairs of these runs whose weights cannot be loaded here -> the reason."""
    from ..components.backbones import create_backbone

    bad: dict[tuple[str, str], str] = {}
    seen: set[tuple[str, str]] = set()
    for s in specs:
        p = s.full_params()
        if "backbone" not in p:
            continue
        pair = (str(p["backbone"]), str(p.get("weights", "imagenet")))
        if pair in seen:
            continue
        seen.add(pair)
        try:
            create_backbone(pair[0], None, weights=pair[1], device="cpu")
        except Exception as exc:  # noqa: BLE001 - WeightsNotFoundError, ModelFileError, ...
            bad[pair] = str(exc).splitlines()[0]
    return bad


def run_sweep(study: StudyConfig, data_root: str, out: Path, executor: LocalExecutor | RayExecutor,
              options: RunOptions, echo: Callable[[str], None] = print, skip_unavailable: bool = False) -> SweepResult:
    """Run every unfinished run of the study; ``skip_unavailable`` drops (with a warning) runs whose
    backbone weights cannot be loaded here instead of failing on them (used for study presets)."""
    t_start = time.perf_counter()
    specs, tags = study.expand(data_root)
    if not specs:
        raise ConfigError("the configuration expands to no runs")
    validate_specs(specs)
    if skip_unavailable:
        bad = unavailable_weights(specs)
        for (bb, w), why in bad.items():
            n = sum(1 for s in specs if (s.full_params().get("backbone"), str(s.full_params().get("weights", "imagenet")))
                    == (bb, w))
            echo(f"warning: skipping {n} runs with backbone {bb} (weights {w}): {why}")
        specs = [s for s in specs if (s.full_params().get("backbone"), str(s.full_params().get("weights", "imagenet")))
                 not in bad]
        if not specs:
            raise ConfigError("no runs left after skipping those whose backbone weights are unavailable")
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / LOCK_NAME, f"results folder {out}"):
        return _run_locked(study, specs, tags, out, executor, options, echo, t_start)


def dataset_fingerprints(specs: list[RunSpec]) -> dict[str, str]:
    """run_key -> fingerprint of its category's files (``CategoryData.fingerprint``)."""
    by_cat: dict[tuple[str, str], str] = {}
    out: dict[str, str] = {}
    for s in specs:
        cat = (str(s.data_root), s.category)
        if cat not in by_cat:
            by_cat[cat] = scan_category(s.data_root, s.category).fingerprint()
        out[s.key()] = by_cat[cat]
    return out


def _run_locked(study: StudyConfig, specs: list[RunSpec], tags: dict[str, list[str]], out: Path,
                executor: LocalExecutor | RayExecutor, options: RunOptions, echo: Callable[[str], None],
                t_start: float) -> SweepResult:
    store = ResultStore(out / "results.sqlite")
    store.tag((k, e) for k, es in tags.items() for e in es)
    fingerprints = dataset_fingerprints(specs)
    done = store.fingerprints()  # runs stored without a fingerprint (older stores) count as done
    stale = {k for k, fp in fingerprints.items() if done.get(k) not in (None, fp)}
    todo = [s for s in specs if s.key() not in done or s.key() in stale]
    n_exp = len([e for e in study.experiments if e])
    echo(f"{len(specs)} runs ({len(specs) - len(todo)} already finished in {store.path})"
         + (f" in {n_exp} experiments" if n_exp else "") + f"; results -> {out}")
    if stale:
        echo(f"warning: the dataset changed since {len(stale)} stored runs ran (file names, sizes or times differ): "
             "they are run again and their results replaced")
    corruption_pictures(out, specs)
    groups = group_specs(todo)
    failures: list[RunFailure] = []
    i = 0
    try:
        for item in executor.run(groups, options):
            if isinstance(item, RunFailure):
                failures.append(item)
                for s in item.specs:
                    echo(f"FAILED {describe(s)}: {item.message}")
                continue
            assert isinstance(item, RunOutput)
            i += 1
            write_artifacts(out, item.key, item.artifacts)
            item.row["data_fingerprint"] = fingerprints.get(item.key)
            store.add(item.key, item.row, item.details, tags.get(item.key, []), replace=item.key in stale)
            r = item.row
            spec = next((s for s in todo if s.key() == item.key), None)
            label = describe(spec) if spec else f"{r['method']} on {r['category']}"
            echo(f"[{i}/{len(todo)}] {label}: image_auroc={format_value(r.get('image_auroc'))} "
                 f"pixel_auroc={format_value(r.get('pixel_auroc'))} fit {r.get('fit_seconds')} s{_epochs(r)}")
    finally:
        keys = {s.key() for s in specs}
        rows = [r for r in store.rows() if r.get("run_key") in keys]
        csv_path = write_csv(rows, out / "results.csv", FIRST_COLUMNS) if rows else None
        parquet_path = write_parquet(rows, out / "results.parquet", FIRST_COLUMNS) if rows else None
    return SweepResult(rows, len(specs), len(specs) - len(todo), i, failures, csv_path, parquet_path,
                       time.perf_counter() - t_start)


def _epochs(row: dict[str, Any]) -> str:
    """' (N epochs, stopped early)' for a trained method's row, '' otherwise."""
    if row.get("trained_epochs") is None:
        return ""
    return f" ({row['trained_epochs']} epochs{', stopped early' if row.get('stopped_early') else ''})"


def summary_table(rows: list[dict[str, Any]]) -> str:
    cols = ["method", "category", "backbone", "image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1",
            "fit_seconds", "predict_seconds_per_image", "peak_rss_mb"]
    if any(r.get("corruption") not in (None, "none") for r in rows):
        cols[3:3] = ["corruption", "severity"]
    if any("preset" in r for r in rows):  # which settings a row ran with (cli: paper, cpu-quick, custom)
        cols[2:2] = ["preset"]
    return format_table(rows, tuple(cols))


__all__ = ["run_sweep", "write_artifacts", "corruption_pictures", "summary_table", "SweepResult", "ARTIFACTS"]
