"""Shared fixtures: a small synthetic MVTec-layout dataset generated in the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLAWMAP_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]
MVTEC_ROOT = Path(os.environ.get("FLAWMAP_MVTEC_ROOT", REPO.parent / "shared" / "data" / "mvtec"))
#: device of the contract tests' detectors: cpu (default) or cuda[:N] (benchmarks/gpu_check.sh sets it)
TEST_DEVICE = os.environ.get("FLAWMAP_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flawmap.data import make_synthetic_mvtec

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_mvtec(root, categories=("object", "texture"), n_train=10, n_test_good=3, n_test_defect=5, size=128, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_data(synthetic_root: Path):
    """(train Split, test Split) of the synthetic 'object' category at 64 px."""
    from flawmap.data import Transform, load_split, scan_category

    data = scan_category(synthetic_root, "object")
    tf = Transform(resize=64)
    return load_split(data, "train", tf), load_split(data, "test", tf)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A folder nobody can create files in, even root: ``chattr +i`` where the file system and our
    capabilities allow it, else permission bits when not running as root (else the test is skipped)."""
    import subprocess

    d = tmp_path / "readonly"
    d.mkdir()

    def make(path: Path = d) -> Path:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
            made.append(("chattr", path))
        elif os.geteuid() != 0:
            path.chmod(0o555)
            made.append(("chmod", path))
        else:
            pytest.skip("cannot make a read-only folder here (no chattr +i, running as root)")
        return path

    made: list[tuple[str, Path]] = []
    yield make
    for how, path in made:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        else:
            path.chmod(0o755)
