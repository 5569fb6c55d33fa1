"""Exact k-nearest-neighbour search (Euclidean).

``knn`` is brute force on matmul distances, chunked so memory is bounded by ``chunk_elems`` (query
rows x bank rows per block), never by Q x M. ``NearestNeighborIndex`` gives the same neighbours
(up to float rounding) much faster on real feature banks: the bank is split into clusters (centre
c_g, radius r_g); each query first scans its nearest cluster, which gives an upper bound U(q) of its
k-th neighbour distance, then only the clusters with ||q - c_g|| - r_g < U(q) (triangle inequality,
with float error margins), one matmul per (cluster, queries needing it). The index is built from
the bank alone (well under a second for 100k rows), so its owner (PatchCore) keeps it next to its
fitted bank and only the bank is saved.

Memory of a search: the (Q, G) query-to-centre bounds (G <= 256) and blocks of at most
``_BLOCK`` queries x ``_MAX_COLS`` bank rows; nothing grows with Q x M.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import one_cpu_thread

_U = 2.0 ** -24  # float32 unit roundoff
_BLOCK = 64  # queries per matmul in a cluster scan
_MAX_COLS = 8192  # bank rows per matmul in a cluster scan


def sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||a_i - b_j||^2 for a (Q, D), b (M, D) -> (Q, M), clamped at 0."""
    if b_sq is None:
        b_sq = b.pow(2).sum(1)
    d = torch.addmm(b_sq.unsqueeze(0), a, b.T, beta=1.0, alpha=-2.0)  # ||b||^2 - 2 a.b
    d.add_(a.pow(2).sum(1, keepdim=True))
    return d.clamp_(min=0.0)


def nearest_dense(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
                  bank_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN of all queries (Q, D) at once -> (dists (Q, k), idx (Q, k)), sorted ascending: one (Q, M)
    distance matrix, no Python loop, so it traces into an ONNX graph (``deploy.export``); ``knn`` runs it
    chunk by chunk."""
    d = sq_dists(queries, bank, bank_sq)
    v, i = d.min(dim=1, keepdim=True) if k == 1 else torch.topk(d, k, dim=1, largest=False, sorted=True)
    return v.sqrt(), i


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
        v, i = nearest_dense(queries[s:s + q_chunk], bank, k, bank_sq)
        out_d.append(v)
        out_i.append(i)
    return torch.cat(out_d), torch.cat(out_i)


def _sqn(a: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, a)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()


def _nearest(x: np.ndarray, cen: np.ndarray) -> np.ndarray:
    cn = _sqn(cen)
    return np.concatenate([np.argmin(cn - 2 * _mm(x[s:s + 8192], cen.T), 1) for s in range(0, len(x), 8192)])


def _kcenter(x: np.ndarray, g: int) -> np.ndarray:
    """g farthest-point centres of x (n, D): clusters with small radii."""
    sq, idx = _sqn(x), [0]
    d = _sqn(x - x[0])
    for _ in range(1, min(g, len(x))):
        idx.append(j := int(np.argmax(d)))
        np.minimum(d, sq - 2 * _mm(x, x[j]) + sq[j], out=d)
    return x[idx]


class NearestNeighborIndex:
    """Exact kNN over a fixed bank (M, D), pruned by clusters (see the module docstring).

    ``search(queries, k)`` returns what ``knn(queries, bank, k)`` returns, up to float rounding (and
    the choice among exactly tied neighbours). CPU; rebuilt from the bank in well under a second."""

    def __init__(self, bank: torch.Tensor, n_clusters: int | None = None, seed: int = 0) -> None:
        b = bank.detach().to("cpu", torch.float32)
        m, dim = b.shape
        self.m, self.kappa = m, 4 * (dim + 16) * _U  # |matmul d^2 - d^2| <= kappa (|a| + |b|)^2, 2x margin
        self.mu = b.mean(0).numpy()
        x = b.numpy() - self.mu  # centred: better conditioned matmul distances
        g = n_clusters or int(np.clip(round(m ** 0.5 / 2), 1, 256))
        with one_cpu_thread():
            rng = np.random.default_rng(seed)
            cen = _kcenter(x[np.sort(rng.choice(m, min(m, 16 * g), replace=False))], g)  # (G, D)
            lab = _nearest(x, cen)
        rad = np.sqrt(_sqn(x - cen[lab]))  # distance to the own centre (direct differences)
        order = np.lexsort((rad, lab))
        self.perm = torch.from_numpy(order)  # sorted row -> bank index
        self.x, lab, self.rad = np.ascontiguousarray(x[order]), lab[order], rad[order]  # by cluster, radius
        self.xsq = _sqn(self.x)
        self.xt, self.xsqt = torch.from_numpy(self.x), torch.from_numpy(self.xsq)
        self.xmax = float(np.sqrt(self.xsq.max()))
        self.off = np.searchsorted(lab, np.arange(len(cen) + 1))  # cluster g = rows off[g]:off[g+1]
        self.c, self.csq = cen, _sqn(cen)
        self.r = np.zeros(len(cen), np.float32)  # cluster radii
        np.maximum.at(self.r, lab, self.rad * (1 + 1e-5))

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (Q, D) -> (dists (Q, k), bank indices (Q, k)), sorted ascending."""
        if k > self.m:
            raise ValueError(f"k={k} exceeds the memory bank size {self.m}")
        with one_cpu_thread():
            best, idx = self._search(queries.detach().to("cpu", torch.float32).numpy() - self.mu, k)
        return torch.from_numpy(np.sqrt(best)).to(queries.device), self.perm[idx].to(queries.device)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq = len(q)
        qsq = _sqn(q)
        qn = np.sqrt(qsq)
        dc2 = qsq[:, None] + self.csq[None] - 2 * _mm(q, np.ascontiguousarray(self.c.T))  # (Q, G) ~ ||q - c_g||^2
        err = self.kappa * (qn[:, None] + np.sqrt(self.csq)[None]) ** 2
        dlo, dhi = np.sqrt(np.maximum(dc2 - err, 0)), np.sqrt(dc2 + err)  # bounds of ||q - c_g||
        best = np.full((nq, k), np.inf, np.float32)  # k smallest squared distances found (unsorted)
        idx = np.zeros((nq, k), np.int64)
        near, rows = np.argmin(dc2, 1), np.arange(nq)
        u0 = dhi[rows, near] if k == 1 else np.full(nq, np.inf, np.float32)  # centres are bank points
        self._scan(near, rows, q, qsq, qn, best, idx, dlo[rows, near], dhi[rows, near], u0)  # pass 1
        ub = np.sqrt(best.max(1) + self.kappa * (qn + self.xmax) ** 2)  # >= k-th true distance so far
        need = dlo - self.r < ub[:, None]  # ||q - x|| >= ||q - c_g|| - r_g for x in cluster g
        need[rows, near] = False
        g, qi = np.nonzero(need.T)  # pass 2: every other cluster that may hold a closer point
        self._scan(g, qi, q, qsq, qn, best, idx, dlo[qi, g], dhi[qi, g], None)
        o = np.argsort(best, axis=1, kind="stable")
        return np.maximum(np.take_along_axis(best, o, 1), 0), np.take_along_axis(idx, o, 1)

    def _scan(self, g: np.ndarray, qi: np.ndarray, q: np.ndarray, qsq: np.ndarray, qn: np.ndarray,
              best: np.ndarray, idx: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, u0: np.ndarray | None) -> None:
        """Merge distances of queries qi to the members of clusters g into best/idx. Members are
        sorted by their distance r to the centre; ||q - x|| >= |d(q, c) - r| limits each query to the
        members with r in (dlo - U, dhi + U), U = current k-th distance (+ float error)."""
        if not len(g):
            return
        o = np.argsort(g, kind="stable")
        g, qi, dlo, dhi = g[o], qi[o], dlo[o], dhi[o]
        u = np.sqrt(best.max(1)[qi] + self.kappa * (qn[qi] + self.xmax) ** 2) if u0 is None else u0[qi]
        cuts = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
        for s, e in zip(cuts[:-1], cuts[1:]):
            a, b = self.off[g[s]], self.off[g[s] + 1]
            tol = 1e-5 * (dhi[s:e] + u[s:e]) + 1e-30
            lo = a + np.searchsorted(self.rad[a:b], dlo[s:e] - u[s:e] - tol)
            hi = a + np.searchsorted(self.rad[a:b], dhi[s:e] + u[s:e] + tol, side="right")
            o = np.argsort(lo, kind="stable")
            for c in range(0, e - s, _BLOCK):  # blocks of queries sharing a column range
                blk = o[c:c + _BLOCK]
                qs, a0, b0 = qi[s + blk], lo[blk[0]], hi[blk].max()
                for ca in range(a0, b0, _MAX_COLS):
                    self._merge(q[qs], qs, qsq, ca, min(b0, ca + _MAX_COLS), best, idx)

    def _merge(self, qb: np.ndarray, qs: np.ndarray, qsq: np.ndarray, ca: int, cb: int,
               best: np.ndarray, idx: np.ndarray) -> None:
        """Merge the distances of queries qs (coordinates qb) to bank rows [ca, cb) into best/idx."""
        k = best.shape[1]
        # ||x||^2 - 2 q.x (n, m): ranks like ||q - x||^2; ||q||^2 is added to the survivors only
        d = torch.addmm(self.xsqt[ca:cb], torch.from_numpy(qb), self.xt[ca:cb].T, alpha=-2.0).numpy()
        if k == 1:
            j = np.argmin(d, 1)
            v = d[np.arange(len(qs)), j] + qsq[qs]
            better = v < best[qs, 0]
            best[qs[better], 0], idx[qs[better], 0] = v[better], ca + j[better]
            return
        cand = np.concatenate([best[qs], d + qsq[qs, None]], 1)
        cidx = np.concatenate([idx[qs], np.broadcast_to(np.arange(ca, cb), d.shape)], 1)
        p = np.argpartition(cand, k - 1, axis=1)[:, :k]
        best[qs], idx[qs] = np.take_along_axis(cand, p, 1), np.take_along_axis(cidx, p, 1)
