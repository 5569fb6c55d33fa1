"""GalleryIndex: both exact paths (dense fp32, bf16 filter + fp32 check) return the brute-force k smallest
distances over the rows of the chosen images, for k = 1 and k > 1, ties, offsets and odd sizes."""

from __future__ import annotations

import pytest
import torch

from flawmap.components import gallery_knn as gk


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _bank(n: int, p: int, d: int, seed: int, offset: float = 3.0) -> torch.Tensor:
    """Spatially smooth, clustered features with a common offset (like CNN pyramids)."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(6, d, generator=g) * 4
    lab = torch.randint(6, (n, p), generator=g)
    return (proto[lab] + torch.randn(n, p, d, generator=g) + offset).float()


def _brute(q: torch.Tensor, bank: torch.Tensor, images: torch.Tensor, k: int) -> torch.Tensor:
    """float64, by the definition: all rows of the chosen images, sorted."""
    rows = bank[images].reshape(-1, bank.shape[2]).double()
    return torch.sort(torch.cdist(q.double(), rows), dim=1).values[:, :k]


def _check(bank: torch.Tensor, q: torch.Tensor, images: torch.Tensor, k: int, **kw: object) -> None:
    ref = _brute(q, bank, images, k)
    for path in (False, True):
        got = gk.GalleryIndex(bank, bf16_filter=path, **kw).search(q, images, k)  # type: ignore[arg-type]
        assert got.shape == (len(q), k) and got.dtype == torch.float32
        # matmul-form distances of centred rows (dense path): the error is relative to the centred norms
        torch.testing.assert_close(got.double() ** 2, ref ** 2, rtol=1e-4, atol=2e-3, msg=f"bf16_filter={path}")


@pytest.mark.parametrize(("p", "k", "chunk"), [(100, 1, 1 << 24), (100, 7, 1 << 24), (64, 1, 5000), (37, 3, 300)])
def test_both_paths_match_brute_force(p: int, k: int, chunk: int) -> None:
    bank, q = _bank(9, p, 20, 0), _bank(1, 150, 20, 1)[0]
    q[:10] = bank[2, :10]  # distance 0 to a gallery row
    q[10:20] = q[10:20] * 5 - 30  # far from everything
    _check(bank, q, torch.tensor([4, 2, 7, 0]), k, chunk_elems=chunk)


def test_ties_and_constant_features() -> None:
    """Duplicated images and constant rows: many exactly tied candidates (the filter's dense check)."""
    bank = _bank(6, 80, 16, 2)
    bank[3] = bank[1]  # an exact duplicate image
    bank[4] = 0.25  # a constant image: every row ties
    q = torch.cat([bank[1, :30], torch.full((20, 16), 0.25), _bank(1, 30, 16, 3)[0]])
    for k in (1, 4):
        _check(bank, q, torch.tensor([1, 3, 4, 5]), k)


def test_k_above_the_tiles_and_large_offset() -> None:
    """k larger than the number of tiles (no finite bound: dense path) and a large common offset (centring)."""
    bank, q = _bank(3, 70, 12, 4, offset=500.0), _bank(1, 40, 12, 5, offset=500.0)[0]
    _check(bank, q, torch.tensor([0, 2]), 9)  # 2 images x 2 tiles < 9
    _check(bank, q, torch.tensor([0, 1, 2]), 2)


def test_k_out_of_range() -> None:
    bank = _bank(2, 10, 4, 0)
    with pytest.raises(ValueError, match=r"k=21 is out of range; allowed: \[1, 20\]"):
        gk.GalleryIndex(bank).search(bank[0], torch.tensor([0, 1]), 21)


def test_filter_bound_holds() -> None:
    """The bf16 product A stays within the stated bounds of the exact ||q~ - g~||^2 (float64), large norms too."""
    for scale in (1.0, 1e3):
        bank = _bank(2, 300, 96, 6) * scale
        idx = gk.GalleryIndex(bank, bf16_filter=True)
        q = _bank(1, 200, 96, 7)[0] * scale
        qt, n2, eq = gk._rounded(q - idx.mu)
        parts, r3 = gk._split3(n2)
        qa = torch.cat([qt, parts, torch.ones(len(q), 3, dtype=torch.bfloat16)], 1)
        a = (idx.aug[0, :300] @ qa.T).double()  # (P, Q)
        exact = torch.cdist(idx.aug[0, :300, :96].double() / -2, qt.double()) ** 2
        eta = 4 * (96 + gk._AUG) * gk._E32 * (n2.sqrt().double() + idx.gmax) ** 2 + r3.double() + idx.r3 + 1e-30
        assert (exact <= a * (1 + gk._U) + eta).all() and (exact >= a / (1 + gk._U) - eta).all()
        true = torch.cdist(bank[0].double(), q.double())  # the distance bound e_q + e_g
        assert ((true - exact.sqrt()).abs() <= eq.double() + idx.eg).all()


def test_path_decision() -> None:
    assert not gk.use_bf16_filter("meta")
    assert gk.GalleryIndex(_bank(1, 8, 4, 0), bf16_filter=False).filter is False
    assert gk.GalleryIndex.extra_bytes(10, 100, 8, "meta") == 10 * 100 * 4  # norms only off the filter path
