"""Command line: flawmap fit | predict | test | export | bench | tune | report | list."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .params import parse_params

log = logging.getLogger("flawmap")


# ---- helpers ------------------------------------------------------------------------------------
def _int_at_least(low: int):
    """argparse type: an integer >= low (a usage error naming the flag otherwise, exit code 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


def _names(module: str, attr: str) -> Any:
    """Help text listing a registry's names, read only when the help is printed (the registries import torch;
    parsing the command line must not): ``_names("flawmap.registry", "list_detectors")`` -> "fastflow, padim, ..."."""
    def names() -> str:
        import importlib

        found = getattr(importlib.import_module(module), attr)
        return ", ".join(found() if callable(found) else found)

    return names


class _Help(str):
    """argparse help whose ``{}`` fields are filled by ``_names`` functions when ``--help`` is printed."""

    def __new__(cls, text: str, *fields: Any) -> "_Help":
        obj = super().__new__(cls, text)
        obj.fields = fields
        return obj

    def __mod__(self, params: Any) -> str:
        return str.__mod__(str.format(self, *(f() for f in self.fields)), params)


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help=_Help(
        "MVTec-layout root folder (<root>/<category>/train/good, test/, ground_truth/), or the name of an embedded "
        "dataset, generated once: {}", _names("flawmap.data.synthetic", "EMBEDDED_DATASETS")))
    p.add_argument("--resize", type=int, default=None, help="resize images to this size (default: the method's paper setting)")
    p.add_argument("--crop", type=int, default=None, help="center crop after resize (default: the method's paper setting, "
                   "but none for `fit --train` on your own folder; 0 = no crop)")
    _add_aspect_arg(p)


def _add_aspect_arg(p: argparse.ArgumentParser) -> None:
    from .data.transform import ASPECTS

    p.add_argument("--aspect", choices=ASPECTS, default=None, help="what the resize does to images whose aspect ratio "
                   "is not the model input's: stretch (default, the papers') or pad (letterbox: keep the ratio, pad "
                   "the shorter side with black)")


def _add_preset_arg(p: argparse.ArgumentParser) -> None:
    from .presets import list_presets

    p.add_argument("--preset", default=None, metavar="NAME", help="named per-method hyperparameters and preprocessing "
                   f"({', '.join(list_presets())}; `flawmap list --presets`); an explicit --param / --resize / --crop / "
                   "--aspect wins")


def _add_device_arg(p: argparse.ArgumentParser, saved: bool = False) -> None:
    """--device, the one definition; ``saved``: a command that loads a saved model (default: its device)."""
    default = "as saved, i.e. auto: CUDA when present" if saved else "auto: CUDA when present"
    p.add_argument("--device", default=None, help=f"auto, cpu or cuda[:N] (default: {default})")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    _add_preset_arg(p)
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="detector hyperparameter, repeatable (e.g. --param coreset_ratio=0.01 --param layers=[layer2,layer3]); "
                        "see `flawmap list --params METHOD`")
    _add_device_arg(p)


def _transform(method: str, resize: int | None, crop: int | None, preset: str | None = None,
               aspect: str | None = None, whole_part: bool = False):
    from .presets import preset_transform

    return preset_transform(preset, method, resize, crop, aspect, whole_part=whole_part)


# ---- commands -----------------------------------------------------------------------------------
def _fit_sources(args: argparse.Namespace):
    """The CalibrationPlan of a `flawmap fit` command line (every folder and count checked, nothing decoded)."""
    from .data import find_images, resolve_data_root, scan_category
    from .deploy.calibration import DEFAULT_CALIBRATION_FRACTION, plan_calibration
    from .errors import ConfigError

    if args.train is not None and (args.data is not None or args.category is not None):
        raise ConfigError("give either --train DIR (a folder of good images) or --data ROOT --category C, not both")
    if args.train is None and (args.data is None or args.category is None):
        raise ConfigError("give --train DIR (a folder of good images), or --data ROOT together with --category C")
    if args.val_good is not None and args.calibration_fraction is not None:
        raise ConfigError("give either --val-good DIR or --calibration-fraction, not both")
    if args.val_good is not None and args.group_by is not None:
        raise ConfigError("give either --val-good DIR or --group-by, not both (--val-good images are all calibration)")
    if args.train is not None:
        root, files = Path(args.train), find_images(args.train, "--train")
    else:
        cat = scan_category(resolve_data_root(args.data), args.category)
        files = [s.path for s in cat.train]
        root = files[0].parent if files else None
    fraction = DEFAULT_CALIBRATION_FRACTION if args.calibration_fraction is None else args.calibration_fraction
    return plan_calibration(files, val_good=None if args.val_good is None else find_images(args.val_good, "--val-good"),
                            fraction=fraction, seed=args.seed, group_by=args.group_by or "auto", root=root,
                            val_bad=() if args.val_bad is None else find_images(args.val_bad, "--val-bad"))


def _assumption(plan: Any, cal: Any) -> str:
    """What the calibration's promise assumes, in words (one line of `flawmap fit`)."""
    if plan.val_good is not None:
        return "the --val-good images must be other parts than the training images, shot as on the line"
    return (f"shots of one part never straddle training and calibration (group-by {plan.group_by}; "
            "--group-by folder|REGEX if you know the parts)")


def cmd_fit(args: argparse.Namespace) -> int:
    from .deploy.calibration import fit_calibrated
    from .deploy.groups import leakage_line
    from .factory import get_detector
    from .metrics.thresholds import check_target_fpr
    from .model_file import check_save_target

    params = parse_params(args.param)
    if args.device:
        params["device"] = args.device
    det = get_detector(args.method, preset=args.preset, **params)
    det.validate_params()
    check_target_fpr(args.target_fpr)
    check_save_target(args.out, overwrite=args.force)  # before the fit: a refused or read-only --out costs nothing
    tf = _transform(args.method, args.resize, args.crop, args.preset, args.aspect, whole_part=args.train is not None)
    plan = _fit_sources(args)
    fitted = fit_calibrated(det, plan, tf, target_fpr=args.target_fpr, skip_bad=args.skip_bad,
                            device=args.device or "auto")
    where = {"train": str(args.train)} if args.train is not None else {"data": str(args.data), "category": args.category}
    path = det.save(args.out, extra=fitted.extra(**where), overwrite=args.force)
    for f in fitted.skipped:
        print(f"skipped unreadable image: {f}", file=sys.stderr)
    cal = fitted.calibration
    print(f"fitted {args.method} on {fitted.n_train} images in {fitted.fit_seconds:.1f} s -> {path}")
    print(f"calibration: {cal.source}; anomalous iff score >= {cal.image_threshold:.6g} (target false-alarm rate "
          f"{100 * cal.target_fpr:g}%, guaranteed {100 * cal.guaranteed_fpr:.1f}%)")
    print(f"this holds for new parts if they are like the calibration images: {_assumption(plan, cal)}")
    if note := cal.resolution_note():
        print(note, file=sys.stderr)
    if warning := leakage_line(cal.leakage or {}):
        print(warning, file=sys.stderr)
    if fitted.val_bad is not None:
        vb = fitted.val_bad
        print(f"--val-bad: {vb['misses']} of {vb['n']} defective images pass as good (expected miss rate "
              f"{100 * vb['miss_rate']:.1f}%)")
    return 0


def _collect_images(inputs: Sequence[str]) -> list[Path]:
    from .data import find_images
    from .errors import DataError

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += find_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


SCORES_CSV = "scores.csv"


def is_predict_output(path: Path) -> bool:
    """A folder written by `flawmap predict`: scores.csv and overlay PNGs, nothing else."""
    names = [p.name for p in path.iterdir()]
    return SCORES_CSV in names and all(n == SCORES_CSV or n.endswith("_overlay.png") for n in names)


def _decision_of(pred: Any, args: argparse.Namespace):
    """The model's stored calibration with the --threshold / --target-fpr overrides; None when it has none."""
    from .errors import ConfigError

    cal = pred.calibration
    if cal is None:
        if args.threshold is not None or args.target_fpr is not None:
            raise ConfigError(f"{args.model} has no calibration (fitted by an older flawmap), so --threshold / "
                              "--target-fpr cannot be applied; refit it with `flawmap fit`")
        print(f"{args.model} has no calibration (fitted by an older flawmap): raw scores only, no verdict; refit "
              "it with `flawmap fit`", file=sys.stderr)
        return None
    if args.target_fpr is not None:
        cal = cal.with_target_fpr(args.target_fpr)
    return cal.with_threshold(args.threshold) if args.threshold is not None else cal


def cmd_predict(args: argparse.Namespace) -> int:
    from .data import load_image
    from .data.images import check_image_size, warn_distorted
    from .deploy.predictor import decide, open_predictor
    from .io import atomic_replace_dir, check_replaceable, check_writable
    from .progress import progress
    from .viz.heatmap import calibrated_panel, save_png

    out = Path(args.out)
    # the output folder is replaced as a whole at the end: it must be new, empty or a previous predict output
    check_replaceable(out, is_predict_output, "`flawmap predict` output folder (scores.csv + overlay PNGs)",
                      force_flag="a new --out folder")
    check_writable(out.parent)
    pred = open_predictor(args.model, device=args.device)
    cal = _decision_of(pred, args)
    files = _collect_images(args.inputs)
    size = pred.transform.stretched_to()  # None: letterboxed, nothing is distorted
    rows: list[dict[str, Any]] = []
    distorted: list[Path] = []

    def build(tmp: Path) -> None:  # every file goes to a temporary folder; a failure leaves --out as it was
        for i in progress(range(0, len(files), args.batch_size), desc="predict",
                          total=-(-len(files) // args.batch_size)):
            batch = files[i:i + args.batch_size]
            x = pred.preprocess([check_image_size(load_image(f), f, size, distorted) for f in batch])
            scores, maps = pred.raw(x)
            for f, img, m, v in zip(batch, x, maps, decide(cal, scores)):
                name = f"{len(rows):04d}_{f.stem}_overlay.png"
                save_png(calibrated_panel(img, m, cal), tmp / name)
                rows.append({"path": str(f), "score": v.score, "normalized_score": v.normalized_score,
                             "anomalous": v.anomalous, "max_pixel": float(m.max()), "overlay": name})
        with open(tmp / SCORES_CSV, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_replace_dir(out, build)
    if size is not None:
        warn_distorted(distorted, size)
    if cal is not None:
        print(f"anomalous iff score >= {cal.image_threshold:.6g} (normalized_score >= 0.5; target false-alarm rate "
              f"{100 * cal.target_fpr:g}%, guaranteed {100 * cal.guaranteed_fpr:.1f}%, {cal.source})")
    for r in rows:
        verdict = "" if r["anomalous"] is None else (
            f"  {r['normalized_score']:.3f}  " + ("ANOMALOUS" if r["anomalous"] else "ok"))
        print(f"{r['score']:10.4f}{verdict}  {r['path']}")
    print(f"{len(rows)} images -> {out / SCORES_CSV} and overlay PNGs in {out}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .data import load_split, resolve_data_root, scan_category
    from .deploy.predictor import open_predictor
    from .metrics import decision_rates, evaluate
    from .viz.text import format_table

    pred = open_predictor(args.model, device=args.device)
    test = load_split(scan_category(resolve_data_root(args.data), args.category), "test", pred.transform)
    t0 = time.perf_counter()
    scores, maps = pred.raw(test.images.numpy())
    seconds = (time.perf_counter() - t0) / len(test)
    cal = pred.calibration
    rates = decision_rates(test.labels, cal.decide(scores)) if cal is not None else {}
    row = {"method": pred.method, "category": args.category, "backbone": pred.card.get("backbone"),
           **evaluate(test.labels, scores, test.masks, maps), **rates, "predict_seconds_per_image": seconds}
    print(format_table([row], ("method", "category", "backbone", "image_auroc", "pixel_auroc", "aupro", "image_f1",
                               "pixel_f1", "false_alarm_rate", "miss_rate", "predict_seconds_per_image")))
    if cal is None:
        print(f"{args.model} has no calibration: false_alarm_rate and miss_rate need one; refit it with `flawmap fit`",
              file=sys.stderr)
    else:
        print(f"stored decision (score >= {cal.image_threshold:.6g}): {rates['false_alarms']} false alarms on "
              f"{rates['n_good']} good images, {rates['misses']} misses on {rates['n_defective']} defective images")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Score independent good (and defective) images; compare the observed rates with the stored promise."""
    from .data import find_images, load_files
    from .deploy.calibration import check_promise, recalibrate_model
    from .deploy.predictor import open_predictor
    from .errors import DataError
    from .metrics import binomial_interval, calibrate
    from .metrics.thresholds import MIN_CALIBRATION_IMAGES

    pred = open_predictor(args.model, device=args.device)
    cal = pred.calibration
    if cal is None:
        raise DataError(f"{args.model} has no calibration to check (fitted by an older flawmap); refit it with `flawmap fit`")
    good = load_files(find_images(args.good, "--good"), pred.transform, desc="good")
    scores, maps = pred.raw(good.images.numpy())
    res = check_promise(cal, scores, args.confidence)
    (lo, hi), n, conf = res.interval, res.n, f"{100 * args.confidence:g}%"
    print(f"good: {res.false_alarms} false alarms on {n} images = {100 * res.rate:.1f}% ({conf} interval "
          f"{100 * lo:.1f}-{100 * hi:.1f}%); stored target {100 * cal.target_fpr:g}%, guaranteed "
          f"{100 * cal.guaranteed_fpr:.1f}% ({cal.source})")
    if res.violated:
        print(f"PROMISE VIOLATED: even the lower end of the interval ({100 * lo:.1f}%) is above the guaranteed "
              f"{100 * cal.guaranteed_fpr:.1f}%: these parts are not like the calibration images. Refit with "
              "--group-by / --val-good of other parts, or store a threshold from these images: --recalibrate")
    elif res.consistent:
        print("consistent with the promise")
    else:
        print(f"not shown to be violated: the rate is above the guaranteed one, but {n} images cannot tell (give more)")
    if args.bad is not None:
        bad = load_files(find_images(args.bad, "--bad"), pred.transform, desc="bad")
        passed = int((~cal.decide(pred.raw(bad.images.numpy())[0])).sum())
        blo, bhi = binomial_interval(passed, len(bad), args.confidence)
        print(f"defective: {passed} of {len(bad)} pass as good = miss rate {100 * passed / len(bad):.1f}% "
              f"({conf} interval {100 * blo:.1f}-{100 * bhi:.1f}%)")
    if args.recalibrate:
        if n < MIN_CALIBRATION_IMAGES:
            raise DataError(f"--recalibrate needs at least {MIN_CALIBRATION_IMAGES} good images; got {n}")
        new = calibrate(scores, maps, cal.target_fpr, source=f"{n} good images of {args.good} (flawmap check --recalibrate)")
        extra = recalibrate_model(args.model, new)
        print(f"recalibrated: anomalous iff score >= {new.image_threshold:.6g} (was {cal.image_threshold:.6g}; target "
              f"{100 * new.target_fpr:g}%, guaranteed {100 * new.guaranteed_fpr:.1f}%); the previous calibration is "
              f"kept in the model's calibration_history ({len(extra['calibration_history'])} entries)")
        return 0
    return 1 if res.violated else 0


def load_bench_study(args: argparse.Namespace):
    """The study (or plain sweep) of a `flawmap bench` command line (``flawmap.bench.overrides``)."""
    from dataclasses import fields

    from .bench.overrides import BenchFlags, load_bench_study

    return load_bench_study(BenchFlags(**{f.name: getattr(args, f.name) for f in fields(BenchFlags)}))


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_model

    t0 = time.perf_counter()
    out = export_model(args.model, args.out, args.format, overwrite=args.force)
    print(f"exported {args.model} -> {out} ({out.stat().st_size / 2**20:.1f} MB, {time.perf_counter() - t0:.1f} s); "
          f"run it without PyTorch: flawmap predict {out} IMAGES")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.executors import make_executor
    from .bench.runner import RunOptions
    from .bench.sweep import run_sweep
    from .data import resolve_data_root
    from .data.synthetic import EMBEDDED_DATASETS

    study = load_bench_study(args)
    base = study.base
    for msg in study.skipped:
        print(f"warning: {msg}", file=sys.stderr)
    data_root = str(resolve_data_root(base.data))
    if base.data is None:
        print(f"no --data given: using the embedded synthetic MVTec-layout dataset at {data_root}")
    elif base.data in EMBEDDED_DATASETS:
        print(f"--data {base.data}: using the embedded MVTec-layout dataset at {data_root}")
    if base.executor != "local" or (base.workers or 1) > 1:  # workers may run in another folder
        data_root = str(Path(data_root).resolve())
    out = Path(base.out)
    cache = None if base.feature_cache is False else str(Path(base.feature_cache or out / "feature_cache").resolve())
    options = RunOptions(gallery=base.gallery, feature_cache=cache, threads=args.threads,
                         checkpoints=str((out / "checkpoints").resolve()))
    executor = make_executor(base.executor, base.workers, base.address, args.num_cpus, args.cpus_per_run,
                             keep_going=args.keep_going)
    if study.name:
        print(f"study {study.name!r}: experiments {', '.join(study.experiments)}")
    res = run_sweep(study, data_root, out, executor, options, skip_unavailable=study.is_study)
    _print_summary(res.rows)
    print(f"\nresults table: {res.csv_path}  (all runs of this store: {out / 'results.sqlite'})"
          + (f"; parquet: {res.parquet_path}" if res.parquet_path else ""))
    if cache:
        from .components.features import FeatureCache

        print(f"feature cache: {cache} ({FeatureCache(Path(cache)).size_bytes() / 2**20:.0f} MiB)")
    print(f"{res.n_ran} runs in {res.seconds:.1f} s")
    if base.report and res.rows:
        from .report import build_report

        report_dir = Path(base.report) if isinstance(base.report, str) else out / "report"
        index = build_report(out, report_dir).resolve()
        if args.open:
            import webbrowser

            webbrowser.open(index.as_uri())
        print(f"report: {index.as_uri()}")
    if res.failures:
        n = sum(len(f.keys) for f in res.failures)
        print(f"{n} runs failed (see FAILED lines above); re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


def _print_summary(rows: list[dict[str, Any]]) -> None:
    """The results table with a `preset` column (which flawmap.presets settings each row ran with) and a note
    saying what each preset in it changes from the papers."""
    from .bench.sweep import summary_table
    from .presets import get_preset, list_presets, preset_of

    rows = [{**r, "preset": preset_of(r["method"], r)} for r in rows]
    print(summary_table(rows))
    for name in [*list_presets(), "custom"]:
        methods = list(dict.fromkeys(r["method"] for r in rows if r["preset"] == name))
        if not methods:
            continue
        if name == "custom":
            print(f"preset custom: hyperparameters set by flags ({', '.join(methods)}; see results.csv)")
            continue
        p = get_preset(name)
        changed = [f"{m}: {p.changes(m)}" for m in methods if p.params_for(m) or p.preprocessing_for(m)]
        print(f"preset {name}: {p.description}" + (f" ({'; '.join(changed)})" if changed else f" ({', '.join(methods)})"))


def tune_config(args: argparse.Namespace):
    """The TuneConfig of a `flawmap tune` command line: the YAML file, then the flags."""
    from .bench.tune import OVERRIDE_KEYS, load_tune_config, parse_search_flag

    overrides = {k: getattr(args, k) for k in OVERRIDE_KEYS if k != "feature_cache"}
    overrides["feature_cache"] = False if args.no_feature_cache else args.feature_cache
    params = parse_params(args.param)
    if args.device:
        params["device"] = args.device
    return load_tune_config(args.config, overrides=overrides, params=params,
                            search=parse_search_flag(args.search) if args.search else None)


def cmd_tune(args: argparse.Namespace) -> int:
    from .bench.tune import run_tune

    run_tune(tune_config(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    src = Path(args.results)
    folder = src if src.is_dir() else src.parent
    index = build_report(src, Path(args.out) if args.out else folder / "report")
    print(f"report: {index}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .components.backbones import list_backbones
    from .registry import detector_class, list_detectors

    if args.params:
        cls = detector_class(args.params)
        print(f"{args.params} hyperparameters (defaults):")
        for k, v in cls.default_params().items():
            print(f"  {k} = {v!r}")
        print(f"  paper preprocessing: {cls.paper_transform}")
        return 0
    if args.presets:
        from .presets import get_preset, list_presets

        for name in list_presets():
            p = get_preset(name)
            print(f"{name}: {p.description}")
            for m in list_detectors():
                if p.params_for(m) or p.preprocessing_for(m):
                    print(f"  {m}: {p.changes(m)}")
            if p.cost:
                print(f"  cost: {p.cost}")
        return 0
    from .data.corruptions import list_corruptions

    print("methods:   " + ", ".join(list_detectors()))
    print("backbones: " + ", ".join(list_backbones()))
    print("corruptions (bench --corruption): " + ", ".join(list_corruptions()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .serve.server import open_model, run_server
    from .serve.settings import API_KEY_ENV, ServeSettings

    settings = ServeSettings(model=args.model, host=args.host, port=args.port, workers=args.workers, device=args.device,
                             max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_image_mb=args.max_image_mb,
                             max_pixels=args.max_pixels, max_images=args.max_images,
                             api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV),
                             shutdown_timeout_s=args.shutdown_timeout, **_line_settings(args))
    predictor = open_model(settings)  # a bad model fails here, before the port is bound (one line, exit 2)
    if settings.workers > 1:
        predictor = None  # each worker process loads its own copy
    auth = "API key required" if settings.api_key or settings.admin_key else "no API key"
    print(f"flawmap serve: {predictor.method if predictor else args.model} on http://{settings.host}:{settings.port}/ "
          f"(page /, API docs /docs; {settings.workers} worker(s), max batch {settings.max_batch}, {auth}"
          + (f"; inspection log {settings.log_dir}" if settings.log_dir else "") + ")", flush=True)
    run_server(settings, predictor)
    return 0


# ---- on the line: inspection log, review, model updates (serve --log, log, update) ----------------------
def _add_line_serve_args(p: argparse.ArgumentParser) -> None:
    from .serve.settings import KEEP_IMAGES

    p.add_argument("--log", default=None, metavar="DIR", help="record every scored image in an inspection log "
                   "(SQLite) under DIR: browse it on the page, GET /v1/inspections, `flawmap log DIR`")
    p.add_argument("--keep-images", choices=KEEP_IMAGES, default="anomalous", help="uploads kept under --log DIR, by "
                   "hash (default anomalous)")
    p.add_argument("--max-log-gb", type=float, default=None, help="kept images beyond this size are deleted, oldest "
                   "first; their log rows stay (default: no limit)")
    p.add_argument("--admin-key", default=None, help="key for labels and model reloads (default: $FLAWMAP_ADMIN_KEY); "
                   "with only one of --api-key / --admin-key set, that key guards everything")
    p.add_argument("--drift-window", type=_int_at_least(10), default=500, help="images in the rolling drift window "
                   "(/metrics, /v1/model; default 500)")


def _line_settings(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from .serve.settings import ADMIN_KEY_ENV

    return {"log_dir": args.log, "keep_images": args.keep_images, "max_log_gb": args.max_log_gb,
            "admin_key": args.admin_key if args.admin_key is not None else os.environ.get(ADMIN_KEY_ENV),
            "drift_window": args.drift_window}


def cmd_log(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from .serve.inspections import export_csv, summary

    folder = Path(args.dir)
    s = summary(folder)
    when = lambda t: "-" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")  # noqa: E731
    print(f"{folder}: {s['n']} inspections, {when(s['first'])} .. {when(s['last'])}; {s['kept_images']} kept images "
          f"({s['kept_bytes'] / 2**20:.1f} MB)")
    print("verdicts: " + (", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items())) or "-"))
    print("labels:   " + (", ".join(f"{k} {v}" for k, v in sorted(s["labels"].items())) or "-"))
    far = s["false_alarm_rate"]
    print(f"reviewed good parts: {s['reviewed_good']}, flagged anomalous: {s['false_alarms']} (false-alarm rate "
          f"{'-' if far is None else f'{100 * far:.1f}%'}); confirmed defects: {s['reviewed_defects']}, passed as "
          f"ok: {s['misses']}")
    if s["score_percentiles"]:
        print("scores:   " + ", ".join(f"{k} {v:.6g}" for k, v in s["score_percentiles"].items()))
    for m in s["models"]:
        print(f"model {m['model_id']} (version {m['model_version']}): {m['n']} inspections")
    if args.csv:
        n = export_csv(folder, Path(args.csv))
        print(f"{n} rows -> {args.csv}")
    return 0


def _add_log_parser(sub) -> None:
    p = sub.add_parser("log", help="summarise the inspection log of `flawmap serve --log DIR` (counts, false alarms "
                       "among reviewed parts, score percentiles); --csv exports it")
    p.add_argument("dir", help="the --log DIR of `flawmap serve`")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write every row to FILE (CSV)")
    p.set_defaults(func=cmd_log)


def cmd_update(args: argparse.Namespace) -> int:
    from .deploy.update import plan_update, previous_calibration_files, update_model
    from .errors import ConfigError
    from .model_file import read_model_config

    if args.add_good is None and args.from_log is None:
        raise ConfigError("give new good images: --add-good DIR and/or --from-log DIR --label good")
    if args.label is not None and args.from_log is None:
        raise ConfigError("--label goes with --from-log DIR")
    files: list[Path] = []
    if args.add_good is not None:
        files += _collect_images([args.add_good])
    if args.from_log is not None:
        from .serve.inspections import labeled_images

        files += labeled_images(Path(args.from_log), args.label or "good")
    extra = read_model_config(args.model).get("extra", {})
    previous = _collect_images([args.val_good]) if args.val_good else previous_calibration_files(extra)
    if previous is None:
        print(f"{args.model}: its calibration images cannot be found again (recorded source: "
              f"{(extra.get('calibration') or {}).get('source', '?')}); calibrating on the held-out new images only "
              "(give them with --val-good DIR to keep them)", file=sys.stderr)
        previous = []
    plan = plan_update(files, previous, fraction=args.calibration_fraction, seed=args.seed)
    out = Path(args.out) if args.out else Path(f"{Path(args.model).resolve()}-v{int(extra.get('model_version', 1)) + 1}")
    r = update_model(args.model, plan, out, target_fpr=args.target_fpr, device=args.device, skip_bad=args.skip_bad)
    cal = r.calibration
    print(f"added {r.added} images to {args.model} in {r.add_seconds:.1f} s -> {r.path} (model {r.model_id}, version "
          f"{r.version}, from {r.parent_id})")
    print(f"calibration: {cal.source}; anomalous iff score >= {cal.image_threshold:.6g} (target false-alarm rate "
          f"{100 * cal.target_fpr:g}%, guaranteed {100 * cal.guaranteed_fpr:.1f}%)")
    if note := cal.resolution_note():
        print(note, file=sys.stderr)
    return 0


def _add_update_parser(sub) -> None:
    from .deploy.update import DEFAULT_UPDATE_CALIBRATION_FRACTION

    p = sub.add_parser("update", help="add good images to a fitted PatchCore, PaDiM or SPADE model without refitting, "
                       "recalibrate, save as a new model")
    p.add_argument("model", help="model folder written by `flawmap fit` (or an earlier update); left as it is")
    p.add_argument("--add-good", default=None, metavar="DIR", help="folder of new good images")
    p.add_argument("--from-log", default=None, metavar="DIR", help="also take the kept images of an inspection log "
                   "(`flawmap serve --log DIR`) that an operator labelled (--label)")
    p.add_argument("--label", default=None, choices=("good",), help="which labelled images --from-log takes (good)")
    p.add_argument("--out", default=None, help="the new model folder (default: MODEL-vN, N the new version)")
    p.add_argument("--val-good", default=None, metavar="DIR", help="the previous calibration images (default: "
                   "the ones recorded in the model or re-drawn from its training folder)")
    p.add_argument("--calibration-fraction", type=float, default=DEFAULT_UPDATE_CALIBRATION_FRACTION,
                   help="share of the new images held out for calibration, in (0, 1) (default "
                   f"{DEFAULT_UPDATE_CALIBRATION_FRACTION}, at least 1)")
    p.add_argument("--target-fpr", type=float, default=None, help="target false-alarm rate (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out draw (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: as saved)")
    p.set_defaults(func=cmd_update)


# ---- entry point --------------------------------------------------------------------------------
def _add_global_args(p: argparse.ArgumentParser, default: Any = False) -> None:
    """The flags of every command, before or after its name (`flawmap -v bench` = `flawmap bench -v`). In the
    subcommand parsers default=SUPPRESS, so that an absent flag there keeps the value given before the name."""
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log progress details (INFO level)")
    p.add_argument("--no-progress", action="store_true", default=default, help="hide progress bars")


def _fit_parser(sub: Any) -> None:
    p = sub.add_parser("fit", help="fit a detector on good images, calibrate its decision on held-out good images, save it")
    p.add_argument("--method", default="patchcore", help="detector name (default: patchcore; see `flawmap list`)")
    p.add_argument("--train", default=None, metavar="DIR", help="folder of good images (searched recursively, any "
                   "supported format, mixed sizes); or use --data and --category")
    _add_data_args(p, required=False)
    p.add_argument("--category", default=None, help="category folder under --data (its train/good images)")
    p.add_argument("--out", required=True, help="model folder to write (config.json + model.safetensors); must be "
                   "new or empty, or an existing flawmap model with --force; any other folder or file is refused")
    p.add_argument("--force", action="store_true", help="replace an existing flawmap model folder at --out")
    p.add_argument("--val-good", default=None, metavar="DIR", help="good images kept out of training, used to "
                   "calibrate the decision (default: a held-out fraction of the training images)")
    p.add_argument("--val-bad", default=None, metavar="DIR", help="known defective images (optional): only used to "
                   "report the expected miss rate of the calibrated decision")
    p.add_argument("--calibration-fraction", type=float, default=None, help="fraction of the good images held out "
                   "for calibration, in (0, 1) (default 0.15, at least 8 images); not with --val-good")
    p.add_argument("--target-fpr", type=float, default=0.01, help="target false-alarm rate on good images, in (0, 1) "
                   "(default 0.01 = 1%%)")
    p.add_argument("--group-by", default=None, metavar="RULE", help="which good images belong together (shots of "
                   "one part, bursts): the calibration holds out whole groups. auto (default: near-copies found in "
                   "the images), folder (each sub-folder), none (every image alone), or a regex whose first capture "
                   "group names the part, e.g. 'part(\\d+)_'")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration hold-out draw (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed at the end) instead of "
                   "stopping at the first one")
    _add_method_args(p)
    p.set_defaults(func=cmd_fit)


def _predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="score images with a saved model; write scores.csv and overlay PNGs")
    p.add_argument("model", help="model folder written by `flawmap fit`")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", default="heatmaps", help="output folder (default: heatmaps)")
    override = p.add_mutually_exclusive_group()
    override.add_argument("--threshold", type=float, default=None, help="image-score threshold of the anomalous "
                          "verdict (default: the calibrated one stored at fit)")
    override.add_argument("--target-fpr", type=float, default=None, help="recompute the image and pixel thresholds "
                          "for this false-alarm rate in (0, 1) from the stored calibration scores")
    p.add_argument("--batch-size", type=_int_at_least(1), default=8, help="images per batch (default 8)")
    _add_device_arg(p, saved=True)
    p.set_defaults(func=cmd_predict)


def _check_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="check a saved model's false-alarm promise on independent good images (and its "
                       "miss rate on defective ones); exit status 1 when the promise is violated")
    p.add_argument("model", help="model folder written by `flawmap fit`")
    p.add_argument("--good", required=True, metavar="DIR", help="good images of parts the model never saw")
    p.add_argument("--bad", default=None, metavar="DIR", help="defective images (optional): the miss rate")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the binomial intervals (default 0.95)")
    p.add_argument("--recalibrate", action="store_true", help="store a new threshold computed from the --good images "
                   "(the same held-out rule, at the stored target); the previous calibration stays in the model's history")
    _add_device_arg(p, saved=True)
    p.set_defaults(func=cmd_check)


def _test_parser(sub: Any) -> None:
    p = sub.add_parser("test", help="evaluate a saved model on a category's test split (AUROC, AUPRO and the "
                       "false-alarm / miss rates of its stored decision)")
    p.add_argument("model", help="model folder written by `flawmap fit`")
    p.add_argument("--data", required=True, help=_Help("MVTec-layout root folder, or an embedded dataset: {}",
                                                       _names("flawmap.data.synthetic", "EMBEDDED_DATASETS")))
    p.add_argument("--category", required=True, help="category folder under --data")
    _add_device_arg(p, saved=True)
    p.set_defaults(func=cmd_test)


def _export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export a saved model to one ONNX file (runs with onnxruntime, without PyTorch)")
    p.add_argument("model", help=_Help("model folder written by `flawmap fit` (methods that export: {})",
                                       _names("flawmap.deploy.export", "EXPORTABLE")))
    p.add_argument("--format", default="onnx", help="export format (default and only one: onnx)")
    p.add_argument("-o", "--out", required=True, help="file to write (.onnx); the preprocessing and calibration "
                   "are stored inside it; an existing export is replaced only with --force")
    p.add_argument("--force", action="store_true", help="replace an existing flawmap ONNX export at --out")
    p.set_defaults(func=cmd_export)


def _bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="fit + evaluate methods on categories; one results row per run (sweeps, studies)")
    p.add_argument("config", nargs="?", help="optional YAML config (keys: data, categories, methods{name: {params, grid, "
                   "variants}}, backbones, resize, crop, aspect, seeds, max_train, corruptions, clean, out, executor, workers, "
                   "feature_cache, gallery, report; or a study with experiments: {name: {...}}); flags override it")
    p.add_argument("--study", default=None, metavar="NAME", help="run a study preset: study_NAME.yaml from ./configs or "
                   "the presets shipped with flawmap (e.g. `--study seed`, every experiment of the original study) "
                   "or a study YAML path")
    p.add_argument("--data", default=None, help=_Help("MVTec-layout root, or an embedded dataset: {} (the first is the "
                   "default, no download)", _names("flawmap.data.synthetic", "EMBEDDED_DATASETS")))
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all under --data)")
    p.add_argument("--experiments", default=None, metavar="NAMES", help="comma-separated experiments of the study to "
                   "run (default: all; e.g. everything but a GPU-sized one, listed in the study YAML)")
    p.add_argument("--methods", default=None, help=_Help("comma-separated methods (default without CONFIG/--study: all "
                   "of {}, with the cpu-quick presets of flawmap.bench.defaults; with --study: only these methods of the "
                   "study)", _names("flawmap.registry", "list_detectors")))
    _add_preset_arg(p)
    p.add_argument("--grid", action="append", metavar="KEY=[V1,V2]",
                   help="sweep a hyperparameter over values, repeatable (cartesian product); KEY may be METHOD.KEY")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="fixed hyperparameter for every method that has it, repeatable; KEY may be METHOD.KEY")
    p.add_argument("--backbones", default=None, help="comma-separated backbones swept for every method with a "
                   "`backbone` parameter not set otherwise (see `flawmap list`)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds; each run is repeated per seed (param `seed`)")
    p.add_argument("--corruption", action="append", metavar="NAME[:SEV[:P]]",
                   help=_Help("corrupt the TEST images, repeatable: e.g. gaussian_noise:1,3,5:0.3 (severities 1..5, "
                           "probability per image p; default all severities, p=1); corruptions: {}",
                           _names("flawmap.data.corruptions", "list_corruptions")))
    p.add_argument("--resize", type=int, default=None, help="resize size (default: each method's paper setting)")
    p.add_argument("--crop", type=int, default=None, help="center crop (default: paper setting; 0 = none)")
    _add_aspect_arg(p)
    p.add_argument("--max-train", type=_int_at_least(1), default=None, help="use only the first N training images (quick runs)")
    _add_device_arg(p)
    p.add_argument("--out", default=None, help="output folder for results.sqlite, results.csv, artifacts/ "
                   "(default: results)")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="local (default: in this process, or a process pool with --workers) or ray")
    p.add_argument("--workers", type=_int_at_least(1), default=None,
                   help="parallel runs: local process pool size, or the CPUs of "
                   "a local Ray (default 1)")
    p.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto or ray://head:10001; default: "
                   "start a local Ray)")
    p.add_argument("--num-cpus", type=_int_at_least(1), default=None, help="CPUs of a local Ray started by flawmap (default: "
                   "--workers, else all)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs Ray reserves per run (default 1; torch "
                   "threads follow)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="torch threads per run (default: all cores when "
                   "sequential, cores / --workers in a pool, --cpus-per-run with Ray)")
    p.add_argument("--feature-cache", default=None, metavar="DIR", help="backbone feature cache folder shared by "
                   "runs (default: <out>/feature_cache)")
    p.add_argument("--no-feature-cache", action="store_true", help="do not cache backbone features on disk")
    p.add_argument("--gallery", type=_int_at_least(0), default=None, help="gallery panels saved per run for each of best, worst, "
                   "borderline test images (default 2; 0 = none)")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="DIR", help="write an HTML/Markdown report "
                   "after the sweep (default folder <out>/report; a study and the default run without CONFIG always "
                   "write one)")
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    p.add_argument("--open", action="store_true", help="open the report in a web browser when it is written")
    p.add_argument("--keep-going", action="store_true", help="log a failing run and continue with the others "
                   "(exit code 1 at the end)")
    p.set_defaults(func=cmd_bench)


def _tune_parser(sub: Any) -> None:
    p = sub.add_parser("tune", help="hyperparameter search with Optuna on a validation split drawn from the test set")
    p.add_argument("config", nargs="?", help="optional YAML (keys: method, data, categories, params, search, trials, "
                   "metric, val_fraction, seed, resize, crop, aspect, max_train, out, storage, study_name); flags override it")
    p.add_argument("--method", default=None, help="detector to tune (default: patchcore)")
    _add_preset_arg(p)
    p.add_argument("--data", default=None, help=_Help("MVTec-layout root, or an embedded dataset: {} (the first is the "
                   "default)", _names("flawmap.data.synthetic", "EMBEDDED_DATASETS")))
    p.add_argument("--categories", default=None, help="comma-separated categories; the objective is their mean "
                   "(default: the first category under --data)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="fixed hyperparameter, repeatable")
    p.add_argument("--search", action="append", metavar="KEY=SPEC", help="search space entry, repeatable: "
                   "KEY=[v1,v2] (categorical), KEY=float:LOW:HIGH[:log], KEY=int:LOW:HIGH[:log] (default: "
                   "the method's built-in space; see the documentation, Benchmarks and studies)")
    p.add_argument("--trials", type=_int_at_least(1), default=None, help="trials run by this process (default 20)")
    p.add_argument("--metric", default=None, help=_Help("objective to maximise: {} (default: the first)",
                                                        _names("flawmap.metrics.evaluate", "METRIC_KEYS")))
    p.add_argument("--val-fraction", type=float, default=None, help="fraction of each label's test images used as the "
                   "validation split for the objective (default 0.5); final figures use the rest")
    p.add_argument("--seed", type=int, default=None, help="seed of the validation split and the sampler (default 0)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<out>/optuna.sqlite); "
                   "several workers sharing one URL and --study-name work on one study")
    p.add_argument("--study-name", default=None, help="Optuna study name (default: flawmap-<method>-<categories>)")
    p.add_argument("--resize", type=int, default=None, help="resize size (default: the method's paper setting)")
    p.add_argument("--crop", type=int, default=None, help="center crop (default: paper setting; 0 = none)")
    _add_aspect_arg(p)
    p.add_argument("--max-train", type=_int_at_least(1), default=None, help="use only the first N training images")
    _add_device_arg(p)
    p.add_argument("--out", default=None, help="output folder (default: results/tune)")
    p.add_argument("--feature-cache", default=None, metavar="DIR", help="feature cache folder (default: "
                   "<out>/feature_cache)")
    p.add_argument("--no-feature-cache", action="store_true", help="do not cache backbone features")
    p.set_defaults(func=cmd_tune)


def _report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="static HTML + Markdown + CSV report of bench results (opens offline)")
    p.add_argument("results", help="results.sqlite, results.csv or a `flawmap bench` output folder")
    p.add_argument("-o", "--out", default=None, help="report folder (default: <results folder>/report)")
    p.set_defaults(func=cmd_report)


def _list_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list methods and backbones, or a method's hyperparameters")
    p.add_argument("--params", metavar="METHOD", default=None, help="show METHOD's hyperparameters and defaults")
    p.add_argument("--presets", action="store_true", help="show the presets (flawmap.presets) and what each changes "
                   "per method")
    p.set_defaults(func=cmd_list)


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="HTTP service + web page scoring images with a model folder or an exported .onnx")
    p.add_argument("model", help="model folder written by `flawmap fit`, or an .onnx file written by `flawmap export`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 for every interface)")
    p.add_argument("--port", type=_int_at_least(0), default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=_int_at_least(1), default=1, help="server processes, each loading the model once "
                   "(default 1)")
    p.add_argument("--max-batch", type=_int_at_least(1), default=8, help="images per forward pass: concurrent requests "
                   "are grouped up to this (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long the first image of a batch waits for others "
                   "(default 2 ms)")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="largest encoded image accepted (default 20 MB)")
    p.add_argument("--max-pixels", type=_int_at_least(1), default=50_000_000, help="largest width x height accepted "
                   "(default 50 000 000)")
    p.add_argument("--max-images", type=_int_at_least(1), default=16, help="images per request (default 16); the body "
                   "limit is this x --max-image-mb")
    p.add_argument("--api-key", default=None, help="require this key (X-API-Key header, Authorization: Bearer, or HTTP "
                   "Basic password) on every endpoint but /healthz (default: $FLAWMAP_API_KEY; unset = open)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests may take after "
                   "SIGTERM (default 30)")
    _add_device_arg(p, saved=True)
    p.set_defaults(func=cmd_serve)
    _add_line_serve_args(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flawmap", description="Unsupervised visual anomaly detection and segmentation.")
    ap.add_argument("--version", action="version", version=f"flawmap {__version__}")
    _add_global_args(ap)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _fit_parser(sub)
    _predict_parser(sub)
    _check_parser(sub)
    _test_parser(sub)
    _export_parser(sub)
    _bench_parser(sub)
    _tune_parser(sub)
    _report_parser(sub)
    _list_parser(sub)
    _serve_parser(sub)
    _add_log_parser(sub)
    _add_update_parser(sub)

    for p in sub.choices.values():  # global flags are accepted after the subcommand too
        _add_global_args(p, default=argparse.SUPPRESS)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import FlawmapError
    from .progress import set_progress

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    set_progress(False if args.no_progress else True)
    try:
        return int(args.func(args) or 0)
    except FlawmapError as exc:
        print(f"flawmap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else: one line, the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"flawmap {args.command}: error: {type(exc).__name__}: {first} (unexpected; run with -v for the "
              "traceback)" if not args.verbose else f"flawmap {args.command}: error: {type(exc).__name__}: {first}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
