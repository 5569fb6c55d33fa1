"""Greedy k-center coreset (PatchCore, Roth et al. 2022, Alg. 1): exact or approximate, bounded memory.

Given memory-bank features M (N, D), pick k of them greedily: each step adds the point farthest from
the current centres, argmax_m min_c ||psi(m) - psi(c)||^2 (ties: lowest index), where psi is a
Johnson-Lindenstrauss random projection to d* dims (paper: 128) used only for the selection.

Exactness: every decision uses ``sq_dist`` (float32 differences and squares, fixed pairwise tree sum),
so a pair's value never depends on batch shapes and the exact path picks exactly what
``greedy_coreset_naive`` picks. Matmul distances only skip work, with rigorous float error bounds:
|matmul d^2 - sq_dist| <= kappa (|a| + |b|)^2 (kappa has a 2x margin).

Invariant of the CPU path (``_BlockGreedy``): ``dist[s]`` is, for every point, exactly
min over the centres picked so far of sq_dist(point, centre) (exact mode). Points are grouped
(nearest-centre partition) and each group is cut into blocks of <= ``block`` points that are thin
radial shells around the group centre mu_g, so a block b has an annulus [r_lo, r_hi] of ||x - mu_g||
and a maximum ``block_max[b]`` of dist. One round:

1. top-B: the B largest dist values (found from the block maxima) and tau, the (B+1)-th; every
   point outside the batch has dist <= tau, and dist only decreases.
2. greedy inside the batch while its maximum is > tau (exactly what the textbook loop would pick):
   the accepted picks A (|A| <= ``chain``).
3. apply A to every block: centre c can lower a point of block b only if
   max(||c - mu_g|| - r_hi, r_lo - ||c - mu_g||) < sqrt(block_max[b]) (triangle inequality); the
   surviving (block, centre) pairs get matmul distances, and the pairs whose lower bound is below
   dist get the exact sq_dist.

Memory (the bound, whatever the data): the projected bank N x d* float32, a few O(N) arrays
(dist, slot order, radii: 24 bytes per point) and temporaries of at most ``budget`` float32 elements
per step (points x centres of one block chunk, candidate pairs, the B x B batch Gram matrix with
B <= 4096). Nothing grows with (number of centres x points).

Time: on clustered banks (real CNN patches) the annulus test removes most pairs. On banks without
structure (i.i.d. noise, where all distances concentrate) nothing is pruned and a round costs one
matmul over the bank: N k d* multiply-adds in all, done in BLAS, far faster than the textbook loop's
N k element-wise passes. ``mode="approx"`` applies each pick only to the blocks of its ``probe``
nearest groups (an IVF-style probe); dist is then an upper bound and the picks approximate greedy.
Its error is reported as the coverage radius max_m min_c ||psi(m) - psi(c)|| against the exact one
(``coverage_radius``; benchmarks/bench_coreset_memory.py).

Chunked (streaming) coreset, ``chunked_coreset`` (beyond the paper): M is given as chunks M_1..M_J
(consumed one at a time); each chunk gets its own greedy coreset C_j (k_j = round(ratio |M_j|) picks on
psi(M_j), the same psi for every chunk), only the rows of C_j are kept and the chunk is dropped. Every
m in M_j lies within r_j = max_{m in M_j} min_{c in C_j} ||psi(m) - psi(c)|| of C_j, so the union
C = U_j C_j covers M with radius r <= max_j r_j; one chunk is exactly ``greedy_coreset``. The full bank is
never held (memory: one chunk, its psi and the picks so far) and a pick costs O(|M_j|) instead of O(|M|):
sum_j k_j |M_j| = ratio sum_j |M_j|^2 distance evaluations instead of ratio |M|^2 (textbook loop).
"""

from __future__ import annotations

from typing import Iterable, Literal

import numpy as np
import torch

from ..errors import ConfigError
from ..progress import bar
from .knn import _kcenter, _mm, _nearest, _sqn

_U = 2.0 ** -24  # float32 unit roundoff
_EDGES = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1 << 62])  # buckets of centres per block
CoresetMode = Literal["exact", "approx"]
MODES = ("exact", "approx")


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """psi: (N, D) -> (N, dim) with a Gaussian JL matrix (entries N(0, 1/dim)); identity if D <= dim."""
    n, d = features.shape
    if d <= dim:
        return features.float()
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(d, dim, generator=g) / dim**0.5  # (D, d*)
    return features.float() @ proj.to(features.device)


def _pad_pow2(x: np.ndarray) -> np.ndarray:
    """float32 (N, D) -> (N, 2^ceil(log2 D)) with zero columns (they add exactly nothing)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    p = 1 << max(0, (x.shape[1] - 1).bit_length())
    return x if p == x.shape[1] else np.pad(x, ((0, 0), (0, p - x.shape[1])))


def sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Canonical ||x_i - c_i||^2 for x (n, P), c (P,) or (n, P), P a power of 2: fixed tree sum."""
    s = x - c
    s *= s
    while s.shape[-1] > 1:
        w = s.shape[-1] // 2
        s = s[..., :w] + s[..., w:]
    return s[..., 0]


def greedy_coreset_naive(features: np.ndarray, k: int, start: int) -> np.ndarray:
    """Reference (textbook) greedy k-center, O(N k D) time, O(N) extra memory; the tests' oracle."""
    x = _pad_pow2(features)
    sel = np.empty(k, dtype=np.int64)
    sel[0] = start
    dist = sq_dist(x, x[start])
    for t in range(1, k):
        sel[t] = c = int(np.argmax(dist))
        np.minimum(dist, sq_dist(x, x[c]), out=dist)
    return sel


def coverage_radius(features: np.ndarray, centres: np.ndarray) -> float:
    """max over points of the distance to the nearest selected centre (the k-center objective), via
    the exact pruned kNN index over the centres (bounded memory)."""
    from .knn import NearestNeighborIndex

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    index = NearestNeighborIndex(x[torch.as_tensor(centres)])
    return max(float(index.search(x[s:s + 65536], 1)[0].max()) for s in range(0, len(x), 65536))


def _partition(x: np.ndarray, groups: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-level nearest-centre partition (any partition is valid) -> group id (N,), centres (G, P)."""
    n, gid, cents = len(x), np.zeros(len(x), np.int64), []
    coarse = _kcenter(x[np.sort(rng.choice(n, min(n, 1024), replace=False))], min(32, groups))
    a1 = _nearest(x, coarse)
    for i in range(len(coarse)):
        if len(mem := np.flatnonzero(a1 == i)):
            gi = max(1, round(groups * len(mem) / n))
            cf = _kcenter(x[mem[np.sort(rng.choice(len(mem), min(len(mem), 16 * gi), replace=False))]], gi)
            gid[mem] = len(cents) + _nearest(x[mem], cf)
            cents.extend(cf)
    used, gid = np.unique(gid, return_inverse=True)
    return gid, np.asarray(cents, dtype=np.float32)[used]


class _BlockGreedy:
    """Batched greedy k-center on the CPU (module docstring). x: (N, P) float32, P = 2^j, not copied."""

    def __init__(self, x: np.ndarray, k: int, *, mode: CoresetMode = "exact", block: int = 256,
                 budget: int = 1 << 20, probe: int = 8, seed: int = 0) -> None:
        """x (N, P) is permuted IN PLACE into slot order (pass a copy to keep yours)."""
        n, p = x.shape
        self.x, self.k, self.mode, self.budget, self.probe = x, k, mode, budget, probe
        self.kappa = 4 * (p + 16) * _U  # |matmul d^2 - sq_dist| <= kappa (|a| + |b|)^2
        self.mean = x.mean(0, dtype=np.float64).astype(np.float32)  # centring for matmul bounds
        n_groups = int(np.clip(n // 1024, 1, 1024))
        gid, mu = (_partition(x, n_groups, np.random.default_rng(seed)) if n_groups > 1
                   else (np.zeros(n, np.int64), self.mean[None]))
        self.group_centre = mu - self.mean  # mu_g, centred (G, P)
        self.group_centre_sq = _sqn(self.group_centre)
        # radius ||x - mu_g|| (direct differences, chunked), then slots sorted by (group, radius)
        radius = np.concatenate([np.sqrt(_sqn(x[s:s + 8192] - mu[gid[s:s + 8192]])) for s in range(0, n, 8192)])
        self.point = np.lexsort((radius, gid))  # slot -> point index (N,)
        radius, gid = radius[self.point], gid[self.point]
        _permute_rows(x, self.point)  # x[slot] is now point self.point[slot]
        self.norm = np.concatenate([np.sqrt(_sqn(x[s:s + 8192] - self.mean)) for s in range(0, n, 8192)])  # |x - m|
        # blocks: runs of <= block slots inside one group
        gstart = np.searchsorted(gid, np.arange(len(mu) + 1))
        starts = np.concatenate([np.arange(a, b, block) for a, b in zip(gstart[:-1], gstart[1:]) if b > a])
        self.block_start = np.r_[starts, n]  # (nb + 1,)
        self.block_group = gid[starts]
        self.r_lo, self.r_hi = radius[starts], np.maximum.reduceat(radius, starts)
        # slack of the annulus tests: rounding of the radii and of ||c - mu_g||
        self.tol = 1e-4 * self.r_hi + 64 * _U * float(np.sqrt(self.group_centre_sq.max()) + self.r_hi.max()
                                                      + np.abs(self.mean).sum())
        self.dist = np.full(n, np.inf, np.float32)  # min_c sq_dist(x, c), in slot order
        self.block_max = np.full(len(starts), np.inf, np.float32)
        self.sel = np.empty(k, np.int64)

    # ---- step 3: apply picks to all blocks --------------------------------------------------
    def _apply(self, picks: np.ndarray, exact: bool) -> None:
        """dist <- min(dist, sq_dist(x, c)) for the picked points c (m,) (all blocks; module docstring).
        With ``exact=False`` (approx mode) a pick only reaches the blocks of its ``probe`` nearest groups."""
        c = self.x[picks] - self.mean  # (m, P) centred
        cn = np.sqrt(_sqn(c))
        d2 = self.group_centre_sq[:, None] + cn[None] ** 2 - 2 * _mm(self.group_centre, np.ascontiguousarray(c.T))
        e = self.kappa * (np.sqrt(self.group_centre_sq)[:, None] + cn[None]) ** 2
        lo, hi = np.sqrt(np.maximum(d2 - e, 0)), np.sqrt(d2 + e)  # bounds of ||c - mu_g|| (G, m)
        if not exact and len(lo) > self.probe:
            far = np.argpartition(d2, self.probe - 1, axis=0)[self.probe:]
            np.put_along_axis(lo, far, np.inf, axis=0)
        step = max(1, self.budget // (4 * len(picks)))
        for b0 in range(0, len(self.block_max), step):  # (block, centre) tests in pieces of <= budget / 4
            bl = np.arange(b0, min(len(self.block_max), b0 + step))
            bg, reach = self.block_group[bl], np.sqrt(self.block_max[bl]) * (1 + 1e-6) + self.tol[bl]  # (nb,)
            # lower bound of ||x - c|| over the annulus of each block (nb, m)
            lb = np.maximum(lo[bg] - self.r_hi[bl, None], self.r_lo[bl, None] - hi[bg])
            blk, col = np.nonzero(lb < reach[:, None])  # surviving (block, centre) pairs, by block
            del lb
            if len(blk):
                self._apply_pairs(bl[blk], col, picks, c, cn)

    def _apply_pairs(self, blk: np.ndarray, col: np.ndarray, picks: np.ndarray, c: np.ndarray, cn: np.ndarray) -> None:
        """Exact update for the (block, centre) pairs blk, col (sorted by block), one bmm per bucket
        of blocks with a similar number of centres, in pieces of <= budget elements."""
        first = np.flatnonzero(np.r_[True, blk[1:] != blk[:-1]])
        ublk, cnt = blk[first], np.diff(np.r_[first, len(blk)])
        S, bucket = int(np.diff(self.block_start)[ublk].max()), np.searchsorted(_EDGES, cnt)
        for bk in np.unique(bucket):
            w = np.flatnonzero(bucket == bk)
            R = int(cnt[w].max())
            step = max(1, self.budget // (S * (R + self.x.shape[1])))
            for s in range(0, len(w), step):
                ws = w[s:s + step]
                self._apply_blocks(ublk[ws], col[first[ws, None] + np.minimum(np.arange(R), cnt[ws, None] - 1)],
                                   cnt[ws], picks, c, cn, S)

    def _apply_blocks(self, blocks: np.ndarray, cent: np.ndarray, cnt: np.ndarray, picks: np.ndarray,
                      c: np.ndarray, cn: np.ndarray, S: int) -> None:
        """Update blocks (nb,) by their surviving centres cent (nb, R) (positions in picks; row i has
        cnt[i] real entries, then padding); temporaries nb x S x (R + P)."""
        R = cent.shape[1]
        slots = self.block_start[blocks][:, None] + np.arange(S)  # (nb, S)
        valid = slots < self.block_start[blocks + 1][:, None]
        slots = np.where(valid, slots, self.block_start[blocks][:, None])
        # candidate <=> lower bound |x|^2 + |c|^2 - 2 x.c - kappa (|x| + |c|)^2 < dist (centred x, c);
        # with (|x| + |c|)^2 <= 2|x|^2 + 2|c|^2 (a safe superset): x.c - row > col, where
        # row = ((1 - 2 kappa)|x|^2 - dist) / 2 and col = (1 - 2 kappa)|c|^2 / 2
        q = 1 - 2 * self.kappa
        row = np.where(valid, 0.5 * (q * self.norm[slots] ** 2 - self.dist[slots]), np.inf).astype(np.float32)
        col = np.where(np.arange(R) < cnt[:, None], 0.5 * q * cn[cent] ** 2, np.inf).astype(np.float32)
        xs = self.x[slots] - self.mean  # (nb, S, P)
        z = torch.baddbmm(torch.from_numpy(-row[..., None]), torch.from_numpy(xs),
                          torch.from_numpy(c[cent]).transpose(1, 2)).numpy()  # x.c - row (nb, S, R)
        del xs
        f = np.flatnonzero(z > col[:, None, :])
        if len(f):
            i, f = np.divmod(f, S * R)
            s, m = np.divmod(f, R)
            self._min_exact(self.dist, self.x, slots[i, s], picks[cent[i, m]])
        self.block_max[blocks] = np.where(valid, self.dist[slots], -np.inf).max(1)

    def _min_exact(self, dist: np.ndarray, x: np.ndarray, rows: np.ndarray, cents: np.ndarray) -> None:
        """dist[rows] <- min(dist[rows], sq_dist(x[rows], x[cents])) in pieces of <= budget floats."""
        step = max(1, self.budget // x.shape[1])
        for s in range(0, len(rows), step):
            r = rows[s:s + step]
            np.minimum.at(dist, r, sq_dist(x[r], x[cents[s:s + step]]))

    # ---- steps 1 and 2 ------------------------------------------------------------------------
    def _top(self, b: int) -> tuple[float, np.ndarray]:
        """tau (the (b+1)-th largest dist; -inf if b >= N) and the slots of the b largest, by point index.
        Only blocks whose maximum exceeds tau are read."""
        n, bm = len(self.dist), self.block_max
        if b >= n:
            return -np.inf, np.argsort(self.point)
        nb = len(bm)
        take = min(nb, max(1, -(-4 * (b + 1) * nb // n)))
        while True:
            chosen = np.argpartition(-bm, take - 1)[:take] if take < nb else np.arange(nb)
            slots = _expand(self.block_start[chosen], self.block_start[chosen + 1])
            if len(slots) > b:
                vals = self.dist[slots]
                part = np.argpartition(vals, len(slots) - b - 1)
                tau = float(vals[part[len(slots) - b - 1]])
                more = int(np.count_nonzero(bm > tau))
                if more <= take:  # every block that may hold a value > tau was read
                    top = slots[part[len(slots) - b:]]
                    return tau, top[np.argsort(self.point[top])]
                take = more
            else:
                take = min(nb, 2 * take)

    def _simulate(self, sp: np.ndarray, tau: float, t: int, chain: int) -> tuple[np.ndarray, np.ndarray]:
        """Greedy inside the batch sp (slots sorted by point index) while its max d^2 > tau; returns
        the accepted batch positions (in pick order) and the batch's updated d^2."""
        d, xs = self.dist[sp].copy(), self.x[sp]
        ns = self.norm[sp]
        xc = xs - self.mean
        g2 = 2 * _mm(xc, np.ascontiguousarray(xc.T))  # (B, B)

        def lower(a, b=slice(None)):  # lower bounds of sq_dist between batch positions a and b
            na, nb = ns[a, None], ns[None, b]
            return (na * na + nb * nb - g2[a][:, b]) - self.kappa * (na + nb) ** 2
        acc: list[int] = []
        while (n_ok := min(int(np.count_nonzero(d > tau)), self.k - t - len(acc), chain)) > 0:
            top = np.argsort(-d, kind="stable")[:n_ok]  # by value, ties: lowest point index first
            # the longest prefix in which no pick can lower a later value (picks themselves drop to 0)
            hit = (np.tril(lower(top, top) < d[top][:, None], -1).any(1) | (d[top] <= 0))[1:]
            a = top[:1 + int(np.argmax(hit)) if hit.any() else n_ok]
            acc.extend(a.tolist())
            i, j = np.nonzero(lower(a) < d[None])
            self._min_exact(d, xs, j, a[i])
        return np.asarray(acc, dtype=np.int64), d

    def _pick(self, slots: np.ndarray, t: int) -> int:
        """Append the points at ``slots`` to the selection and apply them to dist; returns the new t."""
        self.sel[t:t + len(slots)] = self.point[slots]
        self._apply(slots, exact=self.mode == "exact" or t == 0)
        return t + len(slots)

    def run(self, start: int, batch: int = 1024, min_batch: int = 256, max_batch: int = 4096, chain: int = 256) -> np.ndarray:
        n = len(self.x)
        t, b = self._pick(np.flatnonzero(self.point == start), 0), min_batch
        pbar, shown = bar(f"coreset ({self.mode}, {n} patches)", total=self.k, unit="pick"), 0
        while t < self.k:
            pbar.update(t - shown)
            shown = t
            tau, sp = self._top(b := min(b, n))
            top = float(self.dist[sp].max())
            if top <= 0:  # every d(x) = 0: the argmax is point 0 from now on
                self.sel[t:] = 0
                break
            acc, d = self._simulate(sp, tau, t, chain)
            if len(acc):
                self.dist[sp] = d
                t, b = self._pick(sp[acc], t), int(np.clip(2 * len(acc), min_batch, batch))
            elif b < min(n, max_batch):  # the batch maximum ties with tau: widen the batch
                b *= 2
            else:  # long run of ties at tau: one textbook step (ties: lowest point index)
                tied = np.flatnonzero(self.dist == top)
                t = self._pick(tied[np.argmin(self.point[tied])][None], t)
        pbar.close()
        return self.sel


def _permute_rows(x: np.ndarray, order: np.ndarray, chunk: int = 1 << 13) -> None:
    """x <- x[order] in place, with O(N) index arrays and 2 x chunk rows of scratch (no copy of x)."""
    n = len(x)
    where, who = np.arange(n), np.arange(n)  # current slot of each original row / row at each slot
    dest = np.empty(n, np.int64)
    dest[order] = np.arange(n)
    for j0 in range(0, n, chunk):
        slots = np.arange(j0, min(n, j0 + chunk))
        rows = order[slots]  # the rows that belong here; they sit at slots >= j0
        src = where[rows]
        incoming = x[src]
        out = dest[who[slots]] >= slots[-1] + 1  # rows here that belong further on
        homeless, vacated = who[slots[out]], src[src > slots[-1]]
        x[vacated] = x[slots[out]]
        x[slots] = incoming
        who[vacated], where[homeless] = homeless, vacated
        who[slots], where[rows] = rows, slots


def _expand(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Concatenation of the ranges [a_i, b_i) (vectorised)."""
    lens = b - a
    out = np.repeat(a - np.r_[0, np.cumsum(lens)[:-1]], lens)
    return out + np.arange(len(out))


def greedy_coreset_fast(features: np.ndarray, k: int, start: int, *, mode: CoresetMode = "exact",
                        budget: int = 1 << 20) -> np.ndarray:
    """Greedy k-center picks (k,) on the CPU; ``mode="exact"`` picks exactly what
    ``greedy_coreset_naive`` picks. Extra memory: O(N) + ``budget`` float32 elements (module docstring)."""
    check_mode(mode)
    if k <= 1:
        return np.array([start], dtype=np.int64)[:k]
    x = _pad_pow2(features)
    return _run(x.copy() if x is features else x, k, start, mode, budget)


def _run(x: np.ndarray, k: int, start: int, mode: CoresetMode, budget: int) -> np.ndarray:
    """The CPU path on x (N, P), P = 2^j, which it permutes in place. Its time is in the batched
    matmuls, which use torch's threads (2 threads: 1.6x faster than 1 on 2 cores, measured)."""
    return _BlockGreedy(x, k, mode=mode, budget=budget).run(start)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"coreset mode={mode!r} is not allowed; allowed values: {', '.join(map(repr, MODES))}")


def greedy_coreset(features: torch.Tensor, ratio: float, *, projection_dim: int = 128, seed: int = 0,
                   start: int | None = None, mode: CoresetMode = "exact") -> torch.Tensor:
    """Indices (k,) of the greedy coreset of ``features`` (N, D) with k = max(1, round(ratio * N))."""
    check_mode(mode)
    n = features.shape[0]
    k = max(1, min(n, int(round(ratio * n))))
    if k >= n:
        return torch.arange(n)
    psi = random_projection(features.detach(), projection_dim, seed)  # (N, d*)
    if start is None:
        start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    if psi.is_cuda:
        return _greedy_torch(psi, k, start).cpu()
    if psi.data_ptr() == features.data_ptr():  # identity projection: never permute the caller's bank
        psi = psi.clone()
    x = _pad_pow2(psi.cpu().numpy())  # psi itself when d* is a power of 2 (no copy): permuted in place
    del psi
    return torch.from_numpy(_run(x, k, start, mode, 1 << 20))


def chunked_coreset(chunks: Iterable[torch.Tensor], ratio: float, *, projection_dim: int = 128, seed: int = 0,
                    mode: CoresetMode = "exact") -> tuple[torch.Tensor, int]:
    """Streaming greedy coreset (module docstring): ``chunks`` yields M_j (N_j, D), each consumed before the
    next is asked for (a producer may overwrite a chunk's buffer once the next one is requested). Returns
    M_C = the rows of U_j C_j (sum_j k_j, D), copies in chunk order, and |M| = sum_j N_j."""
    kept: list[torch.Tensor] = []
    total = 0
    for chunk in chunks:  # M_j (N_j, D)
        idx = greedy_coreset(chunk, ratio, projection_dim=projection_dim, seed=seed, mode=mode)  # C_j (k_j,)
        kept.append(chunk[idx])  # advanced indexing copies: the chunk's buffer may be reused
        total += len(chunk)
    if not kept:
        raise ConfigError("chunked_coreset: no chunk was given (an empty memory bank)")
    return (kept[0] if len(kept) == 1 else torch.cat(kept)), total


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
