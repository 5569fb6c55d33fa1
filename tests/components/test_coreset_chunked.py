"""Chunked (streaming) greedy coreset: the maths on tiny inputs, one chunk = the exact greedy, no chunk held."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from flawmap.components import coreset as cs
from flawmap.errors import ConfigError


def _bank(n: int, d: int, seed: int) -> torch.Tensor:
    """Clustered points (n, d) with very different cluster sizes, like CNN patch features."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, d, generator=g) * 5
    lab = torch.randint(0, 12, (n,), generator=g) ** 2 % 12
    return centres[lab] + torch.randn(n, d, generator=g) * torch.rand(12, 1, generator=g)[lab]


def _radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    """max_m min_c ||m - c|| by brute force (tiny inputs)."""
    return float(torch.cdist(points.double(), centres.double()).min(1).values.max())


def test_one_chunk_is_exactly_the_greedy_coreset() -> None:
    bank = _bank(3000, 160, seed=1)  # D > d*: selected on the projection psi
    rows, total = cs.chunked_coreset(iter([bank]), 0.05, projection_dim=64, seed=3)
    assert total == 3000
    assert torch.equal(rows, bank[cs.greedy_coreset(bank, 0.05, projection_dim=64, seed=3)])


@pytest.mark.parametrize(("sizes", "ratio"), [((700, 700, 700), 0.05), ((1000, 350, 64, 1), 0.1), ((500,) * 6, 0.02)])
def test_chunked_picks_are_each_chunks_greedy_and_cover_within_the_largest_chunk_radius(sizes: tuple[int, ...],
                                                                                       ratio: float) -> None:
    bank = _bank(sum(sizes), 24, seed=len(sizes))  # D <= d*: psi is the identity, radii in feature space
    parts = torch.split(bank, list(sizes))
    rows, total = cs.chunked_coreset(iter(parts), ratio, projection_dim=128, seed=0)
    picks = [p[cs.greedy_coreset(p, ratio, projection_dim=128, seed=0)] for p in parts]
    assert total == len(bank) and torch.equal(rows, torch.cat(picks))
    assert len(rows) == sum(max(1, round(ratio * s)) for s in sizes)
    per_chunk = [_radius(p, c) for p, c in zip(parts, picks)]  # r_j
    union = _radius(bank, rows)  # r of U_j C_j over all of M
    assert union <= max(per_chunk) + 1e-9
    one = cs.chunked_coreset(iter([bank]), len(rows) / len(bank), seed=0)[0]
    assert union >= _radius(bank, one) / 2 - 1e-9  # greedy is a 2-approximation


def test_chunks_are_consumed_one_at_a_time_from_one_reused_buffer() -> None:
    """The producer overwrites a single buffer for every chunk: the picks must be copies taken before
    the next chunk is asked for, so the bank is never held whole (memory: one chunk + the picks)."""
    bank = _bank(2400, 24, seed=7)
    buffer = torch.empty(600, 24)
    asked: list[int] = []

    def chunks() -> Iterator[torch.Tensor]:
        for j in range(4):
            asked.append(j)
            buffer.copy_(bank[600 * j:600 * (j + 1)])
            yield buffer
    rows, total = cs.chunked_coreset(chunks(), 0.05, seed=0)
    expect = torch.cat([p[cs.greedy_coreset(p, 0.05, seed=0)] for p in torch.split(bank, 600)])
    assert asked == [0, 1, 2, 3] and total == 2400 and torch.equal(rows, expect)


def test_no_chunk_is_refused() -> None:
    with pytest.raises(ConfigError, match="no chunk"):
        cs.chunked_coreset(iter([]), 0.1)
    with pytest.raises(ConfigError, match="'exact', 'approx'"):
        cs.chunked_coreset(iter([_bank(100, 8, 0)]), 0.1, mode="fast")  # type: ignore[arg-type]


def test_chunked_bound_holds_for_approx_mode_too() -> None:
    bank = _bank(4000, 24, seed=11)
    parts = torch.split(bank, 1000)
    rows, _ = cs.chunked_coreset(iter(parts), 0.05, seed=0, mode="approx")
    picks = [p[cs.greedy_coreset(p, 0.05, seed=0, mode="approx")] for p in parts]
    assert torch.equal(rows, torch.cat(picks))
    assert _radius(bank, rows) <= max(_radius(p, c) for p, c in zip(parts, picks)) + 1e-9
