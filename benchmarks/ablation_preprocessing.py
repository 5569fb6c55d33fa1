"""Which preprocessing should a model fitted on a user's own folder use? And how to feed grey images?

    python benchmarks/ablation_preprocessing.py --out results/ablation_preprocessing

Two sets with defects at the border and elongated parts, both generated here from flawmap's own
generators: ``surface_tiles`` (``data.synthetic_surface``: grey tiles of aspect 1:1 to 1:2.5 shot under
several lights; cracks, blowholes and frays within the outer 8% of the short side) and ``tall_part``
(``data.synthetic_hard``: a 1:2 bolt; scratches, dents and chipped ends within the outer 9% of the height).
Variants of the preprocessing (``data.transform``): ``paper`` (resize 256, centre crop 224, stretch),
``nocrop`` (resize 256, no crop, stretch) and ``whole`` (resize 256, no crop, letterbox = ``WHOLE_PART``).
Grey feeding (``--grey``): the grey level replicated to three channels (what ``data.images`` does) vs the same
after a per-image contrast stretch to [0, 255] (``autocontrast``), on the grey sets ``surface_tiles`` and
``gray_part``. PatchCore with its paper hyperparameters. Writes ``ablation_preprocessing.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flawmap import get_detector
from flawmap.data import Transform, load_split, scan_category
from flawmap.data.synthetic import make_synthetic_mvtec
from flawmap.data.synthetic_surface import make_surface_set
from flawmap.metrics import evaluate, image_auroc

VARIANTS = {"paper": Transform(256, 224, "stretch"), "nocrop": Transform(256, None, "stretch"),
            "whole": Transform(256, None, "pad")}
EDGE_DEFECTS = {"surface_tiles": "fray", "tall_part": "chipped_end", "gray_part": None}


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> each image's grey range stretched to [0, 255] (same for every channel)."""
    x = images.float()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1.0) * 255.0).round().to(torch.uint8)


def _run(root: Path, category: str, tf: Transform, grey: str, seed: int) -> dict:
    data = scan_category(root, category)
    train = load_split(data, "train", tf, keep_uint8=True)
    test = load_split(data, "test", tf, keep_uint8=True)
    tr, te = (train.images, test.images) if grey == "replicate" else (_autocontrast(train.images), _autocontrast(test.images))
    t0 = time.perf_counter()
    det = get_detector("patchcore", seed=seed).fit(tr)
    fit_s = time.perf_counter() - t0
    res = det.predict(te)
    scores = np.asarray(res.scores)
    row = {k: float(v) for k, v in evaluate(test.labels, scores, test.masks, res.maps).items()
           if k in ("image_auroc", "pixel_auroc", "aupro")}
    edge = EDGE_DEFECTS.get(category)
    if edge:  # image AUROC of the good images vs only the defects at the border
        keep = np.array([t in ("good", edge) for t in test.defect_types])
        row["edge_auroc"] = float(image_auroc(test.labels[keep], scores[keep]))
    return {**row, "fit_s": round(fit_s, 1), "n_train": len(train), "n_test": len(test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/ablation_preprocessing"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-grey", action="store_true", help="skip the grey-feeding comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out / "data"
    if not (root / "surface_tiles").exists():
        make_surface_set(root, n_train_tiles=30, shots=3, n_test_tiles=40, test_shots=1, n_defect_tiles=45, seed=args.seed)
    if not (root / "tall_part").exists():
        make_synthetic_mvtec(root, categories=("tall_part", "gray_part"), n_train=90, n_test_good=30, n_test_defect=45,
                             size=128, seed=args.seed)
    rows = []
    plan = [(c, v, "replicate") for c in ("surface_tiles", "tall_part") for v in VARIANTS]
    if not args.no_grey:
        plan += [(c, "whole", "autocontrast") for c in ("surface_tiles", "gray_part")]
        plan += [("gray_part", "whole", "replicate")]
    for category, variant, grey in plan:
        r = {"category": category, "variant": variant, "grey": grey,
             **_run(root, category, VARIANTS[variant], grey, args.seed)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation_preprocessing.json").write_text(json.dumps(rows, indent=2))
    lines = ["| set | preprocessing | grey | image AUROC | edge-defect AUROC | pixel AUROC | AUPRO | fit s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        edge = f"{r['edge_auroc']:.3f}" if "edge_auroc" in r else "-"
        lines.append(f"| {r['category']} | {r['variant']} | {r['grey']} | {r['image_auroc']:.3f} | {edge} | "
                     f"{r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {r['fit_s']} |")
    (args.out / "ablation_preprocessing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
