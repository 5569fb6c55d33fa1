"""Integration on the real MVTec AD 'bottle' category (read in place, never copied).

Fails loudly (never skips) when the data is missing: set FLAWMAP_MVTEC_ROOT to the MVTec root.
A subset of the training images keeps it quick; the full measurement is in benchmarks/.
"""

from __future__ import annotations

import pytest

from flawmap.bench.runner import RunSpec, run_one

from .conftest import MVTEC_ROOT


def _require_bottle() -> str:
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.fail(f"real MVTec data missing: expected {MVTEC_ROOT / 'bottle'} (set FLAWMAP_MVTEC_ROOT to the MVTec AD root)")
    return str(MVTEC_ROOT)


def test_patchcore_on_real_bottle() -> None:
    root = _require_bottle()
    spec = RunSpec("patchcore", "bottle", root, {"coreset_ratio": 0.1}, max_train=48)
    row, res, test = run_one(spec)
    assert row["n_test"] == 83 and test.masks is not None
    assert row["image_auroc"] >= 0.98, row
    assert row["pixel_auroc"] >= 0.96, row
    assert 0.7 <= row["aupro"] <= 1.0, row
