"""Convergence of a trained detector (FastFlow, RIAD) on one MVTec AD category: the validation loss
curve, and image / pixel AUROC of the best-so-far (early-stopping) weights and of the last weights at
several epoch budgets.

One training run (seeded, ``val_fraction`` of the TRAINING images held out, never stopped:
``patience=0``) is extended stage by stage through its checkpoint (exact resume), and evaluated on
the test split after each stage. Then the stopping rule of a (patience, min_delta) pair can be read
off the recorded validation curve without retraining (:func:`stop_epoch`), and ``--fast`` runs the
``fast`` preset itself (it stops on its own) for the figures of the preset as shipped.

    nice -n 10 python benchmarks/bench_convergence.py fastflow --stages 10,20,40,80,120 --out conv.json
    python benchmarks/bench_convergence.py fastflow --fast --out fast.json      # the preset alone
    python benchmarks/bench_convergence.py riad --stages 5,10,20 --param image_size=128 --param precision=bfloat16

Images are loaded with the method's paper preprocessing (``flawmap.presets.preset_transform``; ``--resize`` /
``--crop`` override it); ``--param KEY=VALUE`` as in ``flawmap fit`` (``flawmap.params.parse_params``).

The test AUROCs are reported, never used to choose the stopping rule.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from flawmap import get_detector
from flawmap.components.checkpoint import CHECKPOINT_JSON
from flawmap.components.stopping import improves
from flawmap.data import load_split, scan_category
from flawmap.metrics.evaluate import evaluate
from flawmap.params import parse_params
from flawmap.presets import FAST, preset_transform

log = logging.getLogger("bench_convergence")
#: the attribute holding each method's trained network (the checkpoint's ``model.*`` tensors)
NETWORK = {"fastflow": "flow_", "riad": "net_"}


def stop_epoch(val_losses: list[float], patience: int, min_delta: float = 0.0) -> tuple[int, int]:
    """(epochs run, best epoch), 1-based, of the early-stopping rule of ``flawmap.components.training``
    applied to a recorded validation curve (the whole curve when it never stops)."""
    best, best_epoch, bad = None, 0, 0
    for e, v in enumerate(val_losses, 1):
        if improves(v, best, min_delta):
            best, best_epoch, bad = v, e, 0
        else:
            bad += 1
            if patience > 0 and bad >= patience:
                return e, best_epoch
    return len(val_losses), best_epoch


def _auroc(det, test) -> dict[str, float]:
    res = det.predict(test.images)
    m = evaluate(test.labels, res.scores, test.masks, res.maps)
    return {k: float(m[k]) for k in ("image_auroc", "pixel_auroc") if k in m}


def _last_weights(det, method: str, folder: Path):
    """A copy of ``det`` holding the last epoch's weights (the checkpoint's ``model.*``), not the best ones."""
    meta = json.loads((folder / CHECKPOINT_JSON).read_text())
    tensors = load_file(str(folder / meta["tensors"]))
    last = copy.deepcopy(det)
    getattr(last, NETWORK[method]).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=sorted(NETWORK))
    p.add_argument("--root", default="../shared/data/mvtec")
    p.add_argument("--category", default="bottle")
    p.add_argument("--stages", default="10,20,40,80",
                   help="epoch budgets to evaluate at (one run, resumed): a comma list, or FIRST-LAST for every epoch")
    p.add_argument("--resize", type=int, default=None, help="default: the method's paper preprocessing")
    p.add_argument("--crop", type=int, default=None, help="0: no crop; default: the method's paper preprocessing")
    p.add_argument("--no-last", action="store_true", help="evaluate the best-so-far weights only")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--fast", action="store_true", help="run the `fast` preset as shipped instead of the stages")
    p.add_argument("--param", action="append", default=[], help="extra hyperparameter KEY=VALUE (e.g. precision=bfloat16)")
    p.add_argument("--checkpoint-dir", default=None, help="default: /tmp/flawmap_convergence_METHOD")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    data = scan_category(a.root, a.category)
    tf = preset_transform(None, a.method, resize=a.resize, crop=a.crop)
    train, test = load_split(data, "train", tf), load_split(data, "test", tf)
    extra = parse_params(a.param)
    out: dict[str, object] = {"method": a.method, "category": a.category, "n_train": len(train), "n_test": len(test),
                              "params": extra}
    if a.fast:
        t0 = time.perf_counter()
        det = get_detector(a.method, preset=FAST, device="cpu", **extra).fit(train.images)
        rep = det.train_report
        out.update(preset=FAST, fit_s=time.perf_counter() - t0, epochs_done=rep.epochs_done, best_epoch=rep.best_epoch,
                   stopped_early=rep.stopped_early, val_losses=rep.val_losses, train_losses=rep.train_losses,
                   map_changes=rep.map_changes,
                   mean_epoch_s=sum(rep.epoch_seconds) / len(rep.epoch_seconds), **_auroc(det, test),
                   detector=det.get_params())
    else:
        folder = Path(a.checkpoint_dir or f"/tmp/flawmap_convergence_{a.method}")
        stages = []
        if "-" in a.stages:
            first, last = (int(x) for x in a.stages.split("-"))
            budgets = list(range(first, last + 1))
        else:
            budgets = [int(x) for x in a.stages.split(",")]
        for epochs in budgets:
            t0 = time.perf_counter()
            det = get_detector(a.method, epochs=epochs, val_fraction=a.val_fraction, patience=0,
                               checkpoint_dir=str(folder), device="cpu", **extra).fit(train.images)
            rep = det.train_report
            row = {"epochs": epochs, "fit_s": time.perf_counter() - t0, "best_epoch": rep.best_epoch,
                   "epoch_s": rep.epoch_seconds, "best": _auroc(det, test),
                   "last": None if a.no_last else _auroc(_last_weights(det, a.method, folder), test)}
            stages.append(row)
            out.update(stages=stages, val_losses=rep.val_losses, train_losses=rep.train_losses)
            log.info("stage %d: best epoch %s best %s last %s", epochs, rep.best_epoch, row["best"], row["last"])
            if a.out:
                Path(a.out).write_text(json.dumps(out, indent=1))
        rules = {}
        for patience in (3, 5, 10, 20):
            for min_delta in (0.0, 1e-4, 1e-3, 1e-2):
                rules[f"patience={patience},min_delta={min_delta:g}"] = stop_epoch(out["val_losses"], patience, min_delta)  # type: ignore[arg-type]
        out["stop_rules"] = rules
    text = json.dumps(out, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(json.dumps({k: v for k, v in out.items() if k not in ("val_losses", "train_losses")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
