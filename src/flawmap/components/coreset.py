"""Greedy k-center coreset (PatchCore, Roth et al. 2022, Alg. 1), exact and fast.

Given memory-bank features M (N, D), pick k of them greedily: each step adds the point farthest from
the current centres, argmax_m min_c ||psi(m) - psi(c)||^2 (ties: lowest index), where psi is a
Johnson-Lindenstrauss random projection to d* dims (paper: 128) used only for the selection.

Exactness: every decision uses ``sq_dist`` (float32 differences and squares, fixed pairwise tree sum),
so a pair's value never depends on batch shapes and the fast path picks exactly what
``greedy_coreset_naive`` picks. Matmul distances only skip work, with rigorous float error bounds:
|matmul d^2 - sq_dist| <= kappa (|a| + |b|)^2 (kappa has a 2x margin).

Fast CPU path (``_Greedy``): a round takes the top-B points by d(x) (tau, the (B+1)-th value, bounds
every other point, and d only decreases) and simulates greedy inside the batch while its maximum
stays > tau (chains of picks that cannot affect each other are taken at once). Other points are
updated lazily: points sit in chunks of <= 64 (radial shells of a coarse partition into groups, in
group-local coordinates); a chunk is refreshed with its pending centres only when its bound ub may
reach the next batch, testing each (chunk, centre) pair with an annulus bound and computing the rest
with one batched matmul per bucket. A point keeps an exact part u and at most one "pending" centre
known to be the best up to an interval, so few exact distances are ever computed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import one_cpu_thread
from .knn import _kcenter, _mm, _nearest, _sqn

_U = 2.0 ** -24  # float32 unit roundoff
_EDGES = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1 << 62])


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
    """Reference (textbook) greedy k-center, O(N k D); used by tests and benchmarks."""
    x = _pad_pow2(features)
    sel = np.empty(k, dtype=np.int64)
    sel[0] = start
    dist = sq_dist(x, x[start])
    for t in range(1, k):
        sel[t] = c = int(np.argmax(dist))
        np.minimum(dist, sq_dist(x, x[c]), out=dist)
    return sel


def _partition(x: np.ndarray, groups: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-level nearest-centre partition (any partition is valid) -> group id (N,), centres (G, P)."""
    n, gid, cents = len(x), np.zeros(len(x), np.int64), []
    coarse = _kcenter(x[np.sort(rng.choice(n, min(n, 256), replace=False))], min(16, groups))
    a1 = _nearest(x, coarse)
    for i in range(len(coarse)):
        if len(mem := np.flatnonzero(a1 == i)):
            gi = max(1, round(groups * len(mem) / n))
            cf = _kcenter(x[mem[np.sort(rng.choice(len(mem), min(len(mem), 16 * gi), replace=False))]], gi)
            gid[mem] = len(cents) + _nearest(x[mem], cf)
            cents.extend(cf)
    used, gid = np.unique(gid, return_inverse=True)
    return gid, np.asarray(cents, dtype=np.float32)[used]


class _Greedy:
    """Exact batched greedy k-center on the CPU (module docstring). x: (N, P) float32, P = 2^j."""

    def __init__(self, x: np.ndarray, k: int, chunk: int = 64, seed: int = 0) -> None:
        (n, p), S = x.shape, chunk
        self.x, self.k, self.S, self.kappa = x, k, S, 4 * (p + 16) * _U
        self.m0 = m0 = x.mean(0, dtype=np.float64).astype(np.float32)  # centring for matmul bounds
        groups = int(np.clip(n // 640, 1, 256))
        gid, self.mu = (_partition(x, groups, np.random.default_rng(seed)) if groups > 1
                        else (np.zeros(n, np.int64), m0[None]))
        self.gc = self.mu - m0  # group reference points mu_g (G, P), centred
        self.gc2, G = _sqn(self.gc), len(self.mu)
        order, cnt = np.argsort(gid, kind="stable"), np.bincount(gid, minlength=G)
        gs = np.r_[0, np.cumsum(cnt)]
        loc, w = x[order], np.empty(n, np.float32)  # group-local coords x' = x - mu_g (error <= u|x'|)
        for g in range(G):
            loc[gs[g]:gs[g + 1]] -= self.mu[g]
            w[gs[g]:gs[g + 1]] = np.einsum("ij,j->i", loc[gs[g]:gs[g + 1]], self.gc[g])  # x'.g_c
        r2, gsort = _sqn(loc), gid[order]
        o2 = np.lexsort((r2, gsort))  # by group, then radius: chunks are thin radial shells
        order, gsort, nchg = order[o2], gsort[o2], -(-cnt // S)
        c0 = np.r_[0, np.cumsum(nchg)]
        self.nch = nch = int(c0[-1])
        pos = c0[gsort] * S + np.arange(n) - gs[gsort]  # slot of point order[i]; pads: orig = -1
        self.orig, self.Xp = np.full(nch * S, -1, np.int64), np.zeros((nch * S, p), np.float32)
        self.rn2, self.w = np.zeros(nch * S, np.float32), np.zeros(nch * S, np.float32)
        self.orig[pos], self.Xp[pos], self.rn2[pos], self.w[pos] = order, loc[o2], r2[o2], w[o2]
        self.Xp, self.rn = self.Xp.reshape(nch, S, p), np.sqrt(self.rn2)  # (chunks, S, P), |x'|
        rr = np.where(self.orig >= 0, self.rn, np.nan).reshape(nch, S)
        self.rlo, self.rhi = np.nanmin(rr, 1), np.nanmax(rr, 1)  # annulus of each chunk
        # slack of the |c - mu_g| vs r tests: rounding of radii and of the coordinate frames
        self.rtol = 1e-4 * self.rhi + 64 * _U * float(np.sqrt(self.gc2.max()) + self.rhi.max() + np.abs(m0).sum())
        self.cgrp, self.rho = np.repeat(np.arange(G), nchg), np.zeros(G, np.float32)  # chunk -> group, radii
        np.maximum.at(self.rho, self.cgrp, self.rhi)
        self.u = np.where(self.orig >= 0, np.inf, -np.inf).astype(np.float32)  # exact part of d^2
        self.hi = self.u.copy()  # upper bound of d^2: min(u, ahi)
        self.pend = np.full(nch * S, -1, np.int64)  # pending centre (index into sel) or -1 ...
        self.alo, self.ahi = np.zeros(nch * S, np.float32), np.zeros(nch * S, np.float32)  # ... d^2 interval
        self.tch, self.ub = np.zeros(nch, np.int64), np.full(nch, np.inf, np.float32)  # centres applied, max hi
        self.sel, self.cc, self.ccn = np.empty(k, np.int64), np.empty((k, p), np.float32), np.empty(k, np.float32)
        self.pg, self.pc = np.empty(0, np.int64), np.empty(0, np.int64)  # (group, centre) pairs (by centre)
        self.plo, self.phi = np.empty(0, np.float32), np.empty(0, np.float32)  # bounds of |c - mu_g|

    def _add(self, idx: np.ndarray, t: int, radius: float) -> None:
        """Append centres idx at positions t..; keep the (group, centre) pairs that may ever matter."""
        self.sel[t:t + len(idx)] = idx
        self.cc[t:t + len(idx)] = cc = self.x[idx] - self.m0
        self.ccn[t:t + len(idx)] = cn = np.sqrt(_sqn(cc))
        d2 = self.gc2[:, None] + cn[None] ** 2 - 2 * _mm(self.gc, np.ascontiguousarray(cc.T))  # (G, m)
        e = self.kappa * (np.sqrt(self.gc2)[:, None] + cn[None]) ** 2
        lo = np.sqrt(np.maximum(d2 - e, 0))
        ci, gi = np.nonzero((lo < (self.rho + radius + self.rtol.max())[:, None]).T)  # ordered by centre
        self.pg, self.pc = np.r_[self.pg, gi], np.r_[self.pc, ci + t]
        self.plo, self.phi = np.r_[self.plo, lo[gi, ci]], np.r_[self.phi, np.sqrt(d2[gi, ci] + e[gi, ci])]

    def _exact(self, slots: np.ndarray, cent: np.ndarray) -> np.ndarray:
        return sq_dist(self.x[self.orig[slots]], self.x[self.sel[cent]])

    def _resolve(self, s: np.ndarray) -> None:
        """Fold the pending centres of slots s into the exact part."""
        if len(s := s[self.pend[s] >= 0]):
            self.u[s] = np.minimum(self.u[s], self._exact(s, self.pend[s]))
            self.hi[s], self.pend[s] = self.u[s], -1

    def _hits(self, pp: np.ndarray, cc: np.ndarray, lo: np.ndarray, hh: np.ndarray) -> None:
        """Centres cc that may lower d^2 of slots pp (d^2 in [lo, hh]; a slot's entries are contiguous):
        keep the provably best candidate as pending, else fold overlapping candidates into u."""
        new = np.r_[True, pp[1:] != pp[:-1]]
        first, seg = np.flatnonzero(new), np.cumsum(new) - 1
        ps = pp[first]
        uu, pe = self.u[ps], self.pend[ps]
        dup = cc == pe[seg]  # the pending centre again: represented by its stored interval
        h = np.minimum(np.minimum.reduceat(np.where(dup, np.inf, hh), first), uu)
        h = np.where(pe >= 0, np.minimum(h, self.ahi[ps]), h)  # best upper bound of each slot
        cand, pcand = (lo <= h[seg]) & ~dup, (pe >= 0) & (self.alo[ps] <= h)
        single = (np.bincount(seg[cand], minlength=len(ps)) + pcand == 1) & (h < uu)
        s = cand & single[seg]  # a new unique candidate becomes the pending centre
        q = pp[s]
        self.pend[q], self.alo[q], self.ahi[q], self.hi[q] = cc[s], lo[s], hh[s], hh[s]
        rh, rp = cand & ~single[seg] & (lo < uu[seg]), ~single & pcand & (self.alo[ps] < uu)
        if len(slots := np.r_[pp[rh], ps[rp]]):
            np.minimum.at(self.u, slots, self._exact(slots, np.r_[cc[rh], pe[rp]]))
        q = ps[~single]
        self.pend[q], self.hi[q] = -1, self.u[q]

    def _pairs(self, chs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, pair index) of the pending (group, centre) pairs of chunks chs that pass the annulus
        test max(|c - mu_g| - r_hi, r_lo - |c - mu_g|) < sqrt(ub) (else ||x - c|| >= d(x) for all x)."""
        out_ch, out_p, act, tc = [], [], chs[:0], self.tch[chs]
        tvs = np.unique(tc)
        cuts = np.searchsorted(self.pc, np.r_[tvs, self.pc[-1] + 1])
        for tv, s0, s1 in zip(tvs, cuts[:-1], cuts[1:]):  # centres in [tv, next tv): new for chunks <= tv
            act = np.r_[act, chs[tc == tv]]
            act = act[np.argsort(self.cgrp[act], kind="stable")]
            g = self.cgrp[act]
            gcnt, gub = np.bincount(g, minlength=len(self.rho)), np.zeros(len(self.rho), np.float32)
            np.maximum.at(gub, g, self.ub[act])
            pg = self.pg[s0:s1]
            near = self.plo[s0:s1] < self.rho[pg] + np.sqrt(gub[pg]) * 1.000001 + self.rtol.max()  # group test
            sp = s0 + np.flatnonzero((gcnt[pg] > 0) & near)
            reps = gcnt[self.pg[sp]]  # expand each pair to the active chunks of its group
            pair = np.repeat(sp, reps)
            within = np.arange(len(pair)) - np.repeat(np.cumsum(reps) - reps, reps)
            ch = act[np.r_[0, np.cumsum(gcnt)][self.pg[pair]] + within]
            lb = np.maximum(self.plo[pair] - self.rhi[ch], self.rlo[ch] - self.phi[pair])
            keep = lb < np.sqrt(self.ub[ch]) * 1.000001 + self.rtol[ch]
            out_ch.append(ch[keep])
            out_p.append(pair[keep])
        return np.concatenate(out_ch), np.concatenate(out_p)

    def _refresh(self, chs: np.ndarray, t: int) -> None:
        """Apply all pending centres (< t) to the chunks chs."""
        ch, pid = self._pairs(chs)
        S, kap, hits = self.S, self.kappa, []
        o = np.argsort(ch, kind="stable")
        ch, pid = ch[o], pid[o]
        first = np.flatnonzero(np.r_[True, ch[1:] != ch[:-1]])[:len(ch)]
        uch, rc = ch[first], np.diff(np.r_[first, len(ch)])
        bucket = np.searchsorted(_EDGES, rc)  # chunks with a similar number of centres
        for b in np.unique(bucket):
            w = np.flatnonzero(bucket == b)
            cb, nc, col = uch[w], rc[w], np.arange(rc[w].max())
            pair = pid[first[w][:, None] + np.minimum(col, nc[:, None] - 1)]  # (nb, R), padded
            cent = self.pc[pair]
            lo2, hi2 = self.plo[pair] ** 2, self.phi[pair] ** 2  # |c - mu_g|^2 in [lo2, hi2]
            pidx, gn = cb[:, None] * S + np.arange(S), np.sqrt(self.gc2[self.cgrp[cb]])[:, None]  # (nb, S)
            rg = self.rn[pidx] + gn + float(self.ccn[cent].max())  # >= |x'| + |c - mu_g|
            e = kap * rg ** 2  # >= float error of the matmul d^2
            # candidate <=> lower bound |x'|^2 + |c - mu|^2 - 2 x'.(c - mu) - e < hi (capped: d^2 <= rg^2),
            # with x'.(c - mu_g) = x'.c_c - x'.g_c (centred c_c, g_c), rearranged to z > bcol:
            arow = 0.5 * (self.rn2[pidx] + 2 * self.w[pidx] - np.minimum(self.hi[pidx] * (1 + 8 * _U), 2 * rg ** 2) - e)
            z = torch.baddbmm(torch.from_numpy(-arow[:, :, None]), torch.from_numpy(self.Xp[cb]),
                              torch.from_numpy(self.cc[cent]).transpose(1, 2)).numpy()  # x'.c_c - arow (nb, S, R)
            bcol = np.where(col < nc[:, None], 0.5 * lo2, np.inf)[:, None, :]
            if len(f := np.flatnonzero(z > bcol)):  # flat: 10x faster
                i, f = np.divmod(f, S * len(col))
                j, m = np.divmod(f, len(col))
                sl, c = pidx[i, j], cent[i, m]
                e = kap * (self.rn[sl] + gn[i, 0] + self.ccn[c]) ** 2 + 8 * _U * rg[i, j] ** 2
                base = self.rn2[sl] - 2 * (z[i, j, m] + arow[i, j] - self.w[sl])
                hits.append((sl, c, base + lo2[i, m] - e, base + hi2[i, m] + e))
        if hits:
            self._hits(*(np.concatenate(z) for z in zip(*hits)))
        self.tch[chs], self.ub[chs] = t, self.hi.reshape(self.nch, S)[chs].max(1)

    def _simulate(self, sp: np.ndarray, tau: float, t: int, chain: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Greedy inside the batch sp (slots sorted by point index) while its max d^2 > tau; returns
        the accepted batch positions (in pick order) and the batch's updated d^2."""
        d, xs = self.u[sp].copy(), self.x[self.orig[sp]]
        xc = xs - self.m0
        ns = np.sqrt(_sqn(xc))
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
            np.minimum.at(d, j, sq_dist(xs[j], xs[a[i]]))
        return np.asarray(acc, dtype=np.int64), d

    def _top(self, b: int, t: int, over: float) -> tuple[float, np.ndarray, int]:
        """Refresh the stale chunks that may hold one of the top b + 1 values; returns tau (the
        (b+1)-th largest upper bound; -inf if b = N), the top-b slots and the iteration count."""
        hi, nslot, n = self.hi, self.nch * self.S, len(self.x)
        for it in range(1 << 30):
            if b >= n:
                tau, stale = -np.inf, np.flatnonzero(self.tch < t)
            else:
                part = np.argpartition(hi, nslot - b - 1)
                tau = hi[part[nslot - b - 1]]
                stale = np.flatnonzero((self.tch < t) & (self.ub >= tau))
                if len(stale) and over * 2 ** it > 1:  # refresh more at once: fewer iterations
                    q = min(int(over * 2 ** it * b), n - 1)
                    stale = np.flatnonzero((self.tch < t) & (self.ub >= np.partition(hi, nslot - q - 1)[nslot - q - 1]))
            if not len(stale):
                break
            self._refresh(stale, t)
        sp = np.flatnonzero(self.orig >= 0) if b >= n else part[nslot - b:]
        return float(tau), sp[np.argsort(self.orig[sp])], it

    def run(self, start: int, batch: int = 1024, min_batch: int = 256, max_batch: int = 4096) -> np.ndarray:
        n, u, hi, real = len(self.x), self.u, self.hi, np.flatnonzero(self.orig >= 0)
        self._add(np.array([start]), 0, np.inf)
        t, b, over = 1, min_batch, 4.0
        while t < self.k:
            tau, sp, it = self._top(b := min(b, n), t, over)
            over = min(16.0, 2 * over) if it > 2 else max(1.0, over / 1.5) if it <= 1 else over
            self._resolve(sp)
            if tau <= 0 and u[sp].max() <= 0:  # every d(x) = 0: the argmax is point 0 from now on
                self.sel[t:] = 0
                break
            radius = float(np.sqrt(max(float(u[sp].max()), tau) * (1 + 8 * _U)))  # >= every d(x) now
            acc, u[sp] = self._simulate(sp, tau, t)
            hi[sp] = u[sp]
            if len(acc):
                self._add(self.orig[sp[acc]], t, radius)
                t, b = t + len(acc), int(np.clip(2 * len(acc), min_batch, batch))
            elif b < min(n, max_batch):  # the batch maximum ties with tau: widen the batch
                b *= 2
            else:  # long run of ties at tau: one plain greedy step over all points
                self._top(n, t, 1.0)
                self._resolve(real)
                m = float(u[real].max())
                self._add(np.array([c := int(self.orig[real[u[real] == m]].min())]), t, float(np.sqrt(m * (1 + 8 * _U))))
                u[real] = hi[real] = np.minimum(u[real], sq_dist(self.x[self.orig[real]], self.x[c]))
                t, self.tch[:], self.ub = t + 1, t + 1, hi.reshape(self.nch, self.S).max(1)
        return self.sel


def greedy_coreset_fast(features: np.ndarray, k: int, start: int) -> np.ndarray:
    """Exact greedy k-center (same picks as ``greedy_coreset_naive``), single-threaded."""
    x = _pad_pow2(features)
    if k <= 1:
        return np.array([start], dtype=np.int64)[:k]
    with one_cpu_thread():
        return _Greedy(x, k).run(start)


def greedy_coreset(features: torch.Tensor, ratio: float, *, projection_dim: int = 128, seed: int = 0,
                   start: int | None = None) -> torch.Tensor:
    """Indices (k,) of the greedy coreset of ``features`` (N, D) with k = max(1, round(ratio * N))."""
    n = features.shape[0]
    k = max(1, min(n, int(round(ratio * n))))
    if k >= n:
        return torch.arange(n)
    psi = random_projection(features.detach(), projection_dim, seed)  # (N, d*)
    if start is None:
        start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    if psi.is_cuda:
        return _greedy_torch(psi, k, start).cpu()
    return torch.from_numpy(greedy_coreset_fast(psi.cpu().numpy(), k, start))


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
