"""Exact k-nearest-neighbour search on matmul distances, chunked so memory is bounded by
``chunk_elems`` (query rows x bank rows per block), never by Q x M."""

from __future__ import annotations

import torch


def sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||a_i - b_j||^2 for a (Q, D), b (M, D) -> (Q, M), clamped at 0."""
    if b_sq is None:
        b_sq = b.pow(2).sum(1)
    d = torch.addmm(b_sq.unsqueeze(0), a, b.T, beta=1.0, alpha=-2.0)  # ||b||^2 - 2 a.b
    d.add_(a.pow(2).sum(1, keepdim=True))
    return d.clamp_(min=0.0)


@torch.no_grad()
def knn(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, chunk_elems: int = 2**24,
        bank_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN in Euclidean distance: queries (Q, D), bank (M, D) -> (dists (Q, k), idx (Q, k)),
    sorted ascending. Distances are sqrt of the clamped matmul form."""
    if k > bank.shape[0]:
        raise ValueError(f"k={k} exceeds the memory bank size {bank.shape[0]}")
    if bank_sq is None:
        bank_sq = bank.pow(2).sum(1)
    q_chunk = max(1, chunk_elems // max(1, bank.shape[0]))
    out_d, out_i = [], []
    for s in range(0, queries.shape[0], q_chunk):
        d = sq_dists(queries[s:s + q_chunk], bank, bank_sq)
        if k == 1:
            v, i = d.min(dim=1, keepdim=True)
        else:
            v, i = torch.topk(d, k, dim=1, largest=False, sorted=True)
        out_d.append(v.sqrt_())
        out_i.append(i)
    return torch.cat(out_d), torch.cat(out_i)
