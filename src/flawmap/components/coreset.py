"""Greedy k-center coreset (PatchCore, Roth et al. 2022, Alg. 1), exact and fast.

Given memory-bank features M (N, D), pick M_C (k of them) greedily: each step adds the point
farthest from the current centres, argmax_m min_c ||psi(m) - psi(c)||_2, where psi is a
Johnson-Lindenstrauss random projection to d* dims (paper: 128) used only for the selection.

The CPU path keeps the exact greedy result but prunes with the triangle inequality: every point x
has its nearest centre a(x) at distance d(x); when a new centre c arrives, x can only move to c if
||c - a(x)|| < 2 d(x), and a whole cluster j can only lose points if ||c - C_j|| < 2 r_j (r_j = the
cluster's radius). Only those points are measured. Each cluster's member list is captured when
its centre is created (points only ever move to the newest centre), so lists only shrink.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..progress import bar

log = logging.getLogger(__name__)


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """psi: (N, D) -> (N, dim) with a Gaussian JL matrix (entries N(0, 1/dim)); identity if D <= dim."""
    n, d = features.shape
    if d <= dim:
        return features.float()
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(d, dim, generator=g) / dim**0.5  # (D, d*)
    return features.float() @ proj.to(features.device)


def _row_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """||x_i - c||_2 for x (n, d), c (d,): direct differences (exact, deterministic per row)."""
    diff = x - c
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def greedy_coreset_naive(features: np.ndarray, k: int, start: int) -> np.ndarray:
    """Reference greedy k-center: O(N k d), used by tests and benchmarks."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    sel = np.empty(k, dtype=np.int64)
    sel[0] = start
    dist = _row_dist(x, x[start])
    for t in range(1, k):
        c = int(np.argmax(dist))
        sel[t] = c
        np.minimum(dist, _row_dist(x, x[c]), out=dist)
    return sel


def greedy_coreset_pruned(features: np.ndarray, k: int, start: int, desc: str = "coreset") -> np.ndarray:
    """Exact greedy k-center with triangle-inequality pruning (same picks as the naive loop)."""
    x = np.ascontiguousarray(features, dtype=np.float32)  # (N, d)
    n = len(x)
    sel = np.empty(k, dtype=np.int64)
    centers = np.empty((k, x.shape[1]), dtype=np.float32)  # C (k, d)
    csq = np.empty(k, dtype=np.float32)  # ||C_j||^2
    radius = np.zeros(k, dtype=np.float32)  # r_j = max d(x) over cluster j
    far = np.zeros(k, dtype=np.int64)  # argmax point of each cluster (lowest index on ties)
    dist = _row_dist(x, x[start])  # d(x) (N,)
    assign = np.zeros(n, dtype=np.int32)  # a(x)
    members: list[np.ndarray] = [np.arange(n)]
    count = np.zeros(k, dtype=np.int64)  # live members per cluster (lists may hold stale entries)
    count[0] = n
    sel[0], centers[0], csq[0] = start, x[start], x[start] @ x[start]
    radius[0], far[0] = dist.max(), int(np.argmax(dist))
    pbar = bar(desc, total=k, unit="pt")
    pbar.update(1)
    for t in range(1, k):
        # next centre: the farthest point overall = farthest point of the widest cluster
        # (ties broken towards the lowest point index, as np.argmax over all points does)
        r = radius[:t]
        j = int(np.argmax(r))
        c = int(far[j]) if np.count_nonzero(r == r[j]) == 1 else int(far[:t][r == r[j]].min())
        cx = x[c]
        sel[t], centers[t], csq[t] = c, cx, cx @ cx
        # ||c - C_j|| for all centres (matvec; a small tolerance keeps the pruning conservative)
        dc = np.sqrt(np.maximum(csq[:t] - 2.0 * (centers[:t] @ cx) + csq[t], 0.0))
        tol = 1e-3 * (float(radius[j]) + 1e-12)
        cand = np.flatnonzero(dc < 2.0 * radius[:t] + tol)
        lists = [members[i] for i in cand]
        lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        idx = np.concatenate(lists)
        owner = np.repeat(cand, lens)
        # drop points that already moved to a newer centre; point-level prune: x can move to c
        # only if ||c - a(x)|| < 2 d(x)
        check = (assign[idx] == owner) & (dc[owner] < 2.0 * dist[idx] + tol)
        cidx = idx[check]
        dnew = _row_dist(x[cidx], cx)
        move = dnew < dist[cidx]
        order = np.argsort(cidx[move], kind="stable")  # keep member lists sorted: argmax = lowest index
        moved = cidx[move][order]
        dist[moved] = dnew[move][order]
        assign[moved] = t
        members.append(moved)
        count[t] = len(moved)
        np.subtract.at(count, owner[check][move], 1)
        if len(moved):
            m = int(np.argmax(dist[moved]))
            radius[t], far[t] = dist[moved[m]], moved[m]
        # compact lists that became mostly stale
        for ci in cand[lens > 2 * count[cand] + 32].tolist():
            mem = members[ci]
            members[ci] = mem[assign[mem] == ci]
        # a cluster's radius changes only if its farthest point moved: refresh just those
        for ci in cand[assign[far[cand]] == t].tolist():
            mem = members[ci]
            mem = mem[assign[mem] == ci]  # compact the list
            members[ci] = mem
            if len(mem):
                m = int(np.argmax(dist[mem]))
                radius[ci], far[ci] = dist[mem[m]], mem[m]
            else:
                radius[ci], far[ci] = 0.0, c
        if t % 256 == 0:
            pbar.update(256)
    pbar.close()
    return sel


def greedy_coreset(features: torch.Tensor, ratio: float, *, projection_dim: int = 128, seed: int = 0,
                   start: int | None = None) -> torch.Tensor:
    """Indices (k,) of the greedy coreset of ``features`` (N, D) with k = max(1, round(ratio * N))."""
    n = features.shape[0]
    k = max(1, min(n, int(round(ratio * n))))
    if k >= n:
        return torch.arange(n)
    psi = random_projection(features, projection_dim, seed)  # (N, d*)
    if start is None:
        start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    if psi.is_cuda:
        return _greedy_torch(psi, k, start).cpu()
    return torch.from_numpy(greedy_coreset_pruned(psi.numpy(), k, start))


@torch.no_grad()
def _greedy_torch(psi: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """Plain greedy on an accelerator, where one O(N d) step per pick is cheap."""
    sel = torch.empty(k, dtype=torch.long, device=psi.device)
    sel[0] = start
    dist = (psi - psi[start]).pow(2).sum(1)
    for t in range(1, k):
        c = torch.argmax(dist)
        sel[t] = c
        dist = torch.minimum(dist, (psi - psi[c]).pow(2).sum(1))
    return sel
