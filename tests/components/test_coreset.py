"""Greedy k-center coreset: the fast CPU path picks exactly what the textbook loop picks (ties too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flawmap.components import coreset as cs


def _clustered(n: int, d: int, seed: int, centres: int = 40) -> np.ndarray:
    """Anisotropic Gaussian clusters of very different sizes and scales, plus a few outliers."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(1.5, 0.05, d)  # decaying spectrum, like CNN features
    c = rng.standard_normal((centres, d)) * 6
    lab = rng.choice(centres, n, p=rng.dirichlet(np.ones(centres) * 0.5))
    x = c[lab] + rng.standard_normal((n, d)) @ mix * rng.uniform(0.2, 2.0, centres)[lab, None]
    x[rng.choice(n, 5, replace=False)] *= 4
    return (x + 3).astype(np.float32)


def _ties(kind: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if kind == "grid":  # many exactly equal distances, duplicates, a covered (all-zero) phase
        return rng.integers(0, 3, size=(1200, 5)).astype(np.float32)
    if kind == "duplicates":
        x = np.repeat(rng.standard_normal((400, 16)).astype(np.float32), 3, axis=0)
        return x[rng.permutation(len(x))]
    if kind == "identical":
        return np.full((900, 8), 2.5, np.float32)
    if kind == "binary":  # few distinct values per coordinate, high dimension
        return (rng.random((1000, 40)) < 0.3).astype(np.float32) * 0.5
    raise ValueError(kind)


@pytest.mark.parametrize(("n", "d", "k", "start"), [
    (4000, 128, 400, 0), (2000, 128, 1000, 1234), (1500, 168, 300, 17), (3000, 3, 700, 5), (1500, 24, 1499, 1),
])
def test_fast_equals_naive_clustered(n: int, d: int, k: int, start: int) -> None:
    x = _clustered(n, d, seed=n + d)
    np.testing.assert_array_equal(cs.greedy_coreset_fast(x, k, start), cs.greedy_coreset_naive(x, k, start))


@pytest.mark.parametrize("kind", ["grid", "duplicates", "identical", "binary"])
def test_fast_equals_naive_with_ties(kind: str) -> None:
    x = _ties(kind)
    for k in (2, 60, len(x) // 2, len(x) - 1):
        for start in (0, len(x) // 3):
            np.testing.assert_array_equal(cs.greedy_coreset_fast(x, k, start), cs.greedy_coreset_naive(x, k, start),
                                          err_msg=f"{kind} k={k} start={start}")


def test_edge_cases() -> None:
    rng = np.random.default_rng(0)
    for n, d in [(2, 1), (3, 2), (17, 5), (65, 7), (700, 1)]:
        x = rng.standard_normal((n, d)).astype(np.float32)
        for k in sorted({1, 2, n - 1}):
            for start in (0, n - 1):
                np.testing.assert_array_equal(cs.greedy_coreset_fast(x, k, start), cs.greedy_coreset_naive(x, k, start))
    assert cs.greedy_coreset_fast(rng.standard_normal((5, 3)), 1, 3).tolist() == [3]  # float64 input


def test_larger_bank_is_exact() -> None:
    """Enough points for many groups / chunks, rounds and long pending lists."""
    x = _clustered(10000, 64, seed=3, centres=120)
    np.testing.assert_array_equal(cs.greedy_coreset_fast(x, 400, 123), cs.greedy_coreset_naive(x, 400, 123))


def test_sq_dist_does_not_depend_on_batch_layout() -> None:
    x = _clustered(513, 168, seed=5)
    xp = cs._pad_pow2(x)
    full = cs.sq_dist(xp, xp[7])
    idx = np.random.default_rng(0).permutation(513)[:100]
    np.testing.assert_array_equal(cs.sq_dist(xp[idx], xp[7]), full[idx])  # gathered rows, bitwise
    np.testing.assert_array_equal(cs.sq_dist(xp[idx], np.repeat(xp[7:8], 100, 0)), full[idx])
    np.testing.assert_allclose(full, ((x.astype(np.float64) - x[7]) ** 2).sum(1), rtol=1e-5)


def test_greedy_coreset_api() -> None:
    feats = torch.from_numpy(_clustered(3000, 168, seed=9))
    idx = cs.greedy_coreset(feats, 0.1, projection_dim=128, seed=0)
    assert idx.dtype == torch.long and idx.shape == (300,)
    assert torch.equal(idx, cs.greedy_coreset(feats, 0.1, projection_dim=128, seed=0))  # deterministic
    psi = cs.random_projection(feats, 128, 0).numpy()
    np.testing.assert_array_equal(idx.numpy(), cs.greedy_coreset_naive(psi, 300, int(idx[0])))
    assert torch.equal(cs.greedy_coreset(feats[:10], 1.0), torch.arange(10))
    assert cs.greedy_coreset(feats[:10], 1e-6).shape == (1,)
    assert cs.greedy_coreset(feats, 0.01, projection_dim=16, start=5)[0] == 5


def test_torch_path_matches_on_generic_data() -> None:
    """The accelerator loop (run here on the CPU) is the same algorithm (no ties in this data)."""
    x = _clustered(1000, 32, seed=11)
    got = cs._greedy_torch(torch.from_numpy(x), 40, 3).numpy()
    np.testing.assert_array_equal(got, cs.greedy_coreset_naive(x, 40, 3))
