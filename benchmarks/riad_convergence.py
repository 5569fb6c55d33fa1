"""RIAD convergence on one MVTec AD category under a preset (default ``fast``: paper settings, early stopping
on a seeded 10% of the TRAINING images), evaluated every ``--every`` epochs.

    python benchmarks/riad_convergence.py --image-size 128 --precision bfloat16 --every 5 \\
        --checkpoint-dir runs/riad_conv128 --out riad_conv128.json

Training runs in chunks of ``--every`` epochs through the checkpoint (resume is exact), so the JSON after
each chunk holds the validation-loss curve, the best epoch so far and the test AUROCs of the weights the
preset would return if it stopped there (best validation epoch). The test images are only scored for the
report; nothing is chosen on them. Stops when early stopping fires or at ``--max-epochs``; run the same
command again to continue after an interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from flawmap import get_detector
from flawmap.data import Transform, load_split, scan_category
from flawmap.metrics.evaluate import evaluate

log = logging.getLogger("riad_convergence")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/work/shared/data/mvtec")
    p.add_argument("--category", default="bottle")
    p.add_argument("--preset", default="fast")
    p.add_argument("--image-size", type=int, default=256, help="RIAD image_size (paper 256)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="extra hyperparameter (JSON value)")
    p.add_argument("--every", type=int, default=5, help="evaluate every N epochs")
    p.add_argument("--max-epochs", type=int, default=None, help="stop here (default: the preset's epochs)")
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    data = scan_category(a.root, a.category)
    tf = Transform(resize=a.image_size)  # loaded at the model's size: no second resize
    train, test = load_split(data, "train", tf), load_split(data, "test", tf)
    params: dict[str, object] = {"image_size": a.image_size, "precision": a.precision, "checkpoint_dir": a.checkpoint_dir}
    for kv in a.param:
        key, _, value = kv.partition("=")
        try:
            v = json.loads(value)
        except ValueError:  # a bare word: a string
            v = value
        params[key] = tuple(v) if isinstance(v, list) else v
    budget = a.max_epochs or get_detector("riad", preset=a.preset, **params).epochs
    out = Path(a.out)
    rows: list[dict[str, object]] = json.loads(out.read_text())["evaluations"] if out.exists() else []
    epochs = rows[-1]["epochs"] if rows else 0
    while epochs < budget:
        epochs = min(budget, epochs + a.every)
        det = get_detector("riad", preset=a.preset, **{**params, "epochs": epochs})
        t0 = time.perf_counter()
        det.fit(train.images)
        fit_s = time.perf_counter() - t0
        rep = det.train_report
        t0 = time.perf_counter()
        res = det.predict(test.images)
        predict_s = time.perf_counter() - t0
        metrics = evaluate(test.labels, res.scores, test.masks, res.maps)
        rows.append({"epochs": rep.epochs_done, "best_epoch": rep.best_epoch, "stopped_early": rep.stopped_early,
                     "val_losses": rep.val_losses, "train_losses": rep.train_losses, "epoch_s": rep.epoch_seconds,
                     "fit_s": fit_s, "predict_s_per_image": predict_s / len(test), "metrics": metrics,
                     "loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        out.write_text(json.dumps({"params": det.get_params(), "preset": a.preset, "threads": a.threads,
                                   "n_train": len(train), "n_test": len(test), "evaluations": rows}, indent=1, default=str))
        log.info("epochs %d (best %s%s): image AUROC %.4f pixel AUROC %.4f", rep.epochs_done, rep.best_epoch,
                 ", stopped early" if rep.stopped_early else "", metrics["image_auroc"], metrics["pixel_auroc"])
        if rep.stopped_early:
            break
        epochs = rep.epochs_done
    return 0


if __name__ == "__main__":
    sys.exit(main())
