"""Exact kNN: the cluster-pruned index returns the brute-force neighbours (up to float rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flawmap.components import knn as kn


def _feats(n: int, d: int, seed: int, centres: int = 30) -> torch.Tensor:
    """Clustered, anisotropic, positive-offset features (like pooled CNN activations)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g) * 4
    mix = torch.randn(d, d, generator=g) * torch.linspace(1.0, 0.05, d)
    lab = torch.randint(centres, (n,), generator=g)
    return (c[lab] + torch.randn(n, d, generator=g) @ mix + 5).float()


def _brute(q: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cdist(q.double(), bank.double())  # float64 reference
    v, i = torch.topk(d, k, dim=1, largest=False, sorted=True)
    return v.float(), i


@pytest.mark.parametrize(("k", "n_clusters"), [(1, None), (9, None), (2, 1), (1, 7), (9, 300)])
def test_index_equals_brute_force(k: int, n_clusters: int | None) -> None:
    bank, q = _feats(2000, 48, 0), _feats(500, 48, 1)
    q[:20] = q[:20] * 3 - 10  # far-away queries
    q[20:40] = bank[100:120]  # queries equal to bank points (distance 0)
    d, i = kn.NearestNeighborIndex(bank, n_clusters=n_clusters).search(q, k)
    d0, i0 = _brute(q, bank, k)
    assert d.shape == i.shape == (500, k) and i.dtype == torch.long
    # matmul-form distances: the error is relative to the norms (visible near 0), compare squares
    torch.testing.assert_close(d ** 2, d0 ** 2, rtol=1e-4, atol=0.05)
    assert torch.equal(i, i0)  # generic data: no ties
    d1, i1 = kn.knn(q, bank, k)  # matches the matmul brute force as well
    torch.testing.assert_close(d ** 2, d1 ** 2, rtol=1e-4, atol=0.05)
    assert torch.equal(i, i1)


def test_duplicates_and_ties() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 3, size=(400, 6)).astype(np.float32)  # many exactly tied distances
    bank = torch.from_numpy(np.concatenate([base, base[:100]]))  # and duplicate rows
    q = torch.from_numpy(rng.integers(0, 3, size=(300, 6)).astype(np.float32) + 0.25)
    for k in (1, 4, 30):
        d, i = kn.NearestNeighborIndex(bank, n_clusters=20).search(q, k)
        d0, _ = _brute(q, bank, k)
        torch.testing.assert_close(d, d0, rtol=1e-5, atol=1e-4)  # the same distances ...
        torch.testing.assert_close((q[:, None] - bank[i]).norm(dim=-1), d, rtol=1e-5, atol=1e-4)  # ... really
        assert all(len(set(row)) == k for row in i.tolist())  # k distinct bank points


def test_edge_cases() -> None:
    bank = _feats(50, 8, 2)
    q = _feats(13, 8, 3)
    for n_clusters in (None, 1, 50, 200):
        index = kn.NearestNeighborIndex(bank, n_clusters=n_clusters)
        d, i = index.search(q, 50)  # k = M
        d0, i0 = _brute(q, bank, 50)
        torch.testing.assert_close(d ** 2, d0 ** 2, rtol=1e-4, atol=0.05)
        assert torch.equal(i.sort(1).values, torch.arange(50).expand(13, -1))
        with pytest.raises(ValueError, match="exceeds"):
            index.search(q, 51)
    one = bank[:1]
    d, i = kn.NearestNeighborIndex(one).search(q, 1)  # M = 1
    torch.testing.assert_close(d[:, 0], (q - one).norm(dim=1), rtol=1e-5, atol=1e-4)
    assert i.eq(0).all()
    d, i = kn.NearestNeighborIndex(bank).search(q[:1], 3)  # Q = 1
    assert d.shape == (1, 3)


def test_scan_in_bounded_column_blocks_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cluster scans are cut into blocks of at most _MAX_COLS bank rows: same neighbours."""
    bank, q = _feats(3000, 32, 4), _feats(400, 32, 5)
    full = kn.NearestNeighborIndex(bank, n_clusters=3)  # ~1000 rows per cluster
    want = [full.search(q, k) for k in (1, 5)]
    monkeypatch.setattr(kn, "_MAX_COLS", 37)
    for k, (d0, i0) in zip((1, 5), want):
        d, i = full.search(q, k)
        torch.testing.assert_close(d, d0)
        assert torch.equal(i, i0)


def test_knn_is_plain_brute_force() -> None:
    """knn() keeps no hidden state: the same call after an in-place change sees the change."""
    bank, q = _feats(5000, 32, 4), _feats(400, 32, 5)
    first = kn.knn(q, bank, 3)
    bank[0] = q[0]
    d, i = kn.knn(q, bank, 1)
    assert i[0, 0] == 0 and d[0, 0] < 0.1  # (matmul-form distance of equal points: ~0)
    assert not hasattr(kn, "_cache")
    small = kn.knn(q, bank[:5], 1)
    assert small[1].max() < 5 and first[0].shape == (400, 3)
    with pytest.raises(ValueError, match="exceeds"):
        kn.knn(q, bank[:2], 3)
