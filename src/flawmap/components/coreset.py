"""Greedy k-center coreset (PatchCore, Roth et al. 2022, Alg. 1), exact and fast.

Given memory-bank features M (N, D), pick k of them greedily: each step adds the point farthest
from the current centres, argmax_m min_c ||psi(m) - psi(c)||^2 (ties: lowest index), where psi is a
Johnson-Lindenstrauss random projection to d* dims (paper: 128) used only for the selection.

Exactness: every decision uses ``sq_dist`` (float32 differences, squares, a fixed pairwise tree
sum), so the value of a pair never depends on batch shapes; the fast path gives the same picks as
``greedy_coreset_naive``. Matmul distances are only used with rigorous error bounds (``kappa``) to
skip pairs that provably cannot matter.

Fast CPU path (``_Greedy``): each round takes the top-B points by current d(x) (tau = the (B+1)-th
value bounds every other point, and d only decreases), simulates greedy inside the batch exactly
while its maximum stays > tau (chains of picks that provably do not affect each other are taken
at once), then defers the update of the other points. Points live in chunks of <= 64 (radial
shells of a coarse partition into groups); a chunk is refreshed with its pending centres only when
its bound ub could reach the next batch, using a group/annulus test per (chunk, centre) and one
batched matmul per bucket. A point keeps an exact part u plus at most one provably-best "pending"
centre known only up to an interval (so most updates need no exact distance).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)
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
    """float32 (N, D) -> (N, 2^ceil(log2 D)) with zero columns (zeros add exactly nothing)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    p = 1 << max(0, (x.shape[1] - 1).bit_length())
    return x if p == x.shape[1] else np.pad(x, ((0, 0), (0, p - x.shape[1])))


def sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Canonical ||x_i - c_i||^2 for x (n, P), c (P,) or (n, P), P a power of 2: fixed tree sum."""
    s = x - c
    s *= s
    w = s.shape[-1]
    while w > 1:
        w //= 2
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


def _sqn(a: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, a)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()


def _kcenter(xs: np.ndarray, g: int) -> np.ndarray:
    """g rough k-center centres of xs (n, P) (only used to build the partition)."""
    sq, xt, idx = _sqn(xs), torch.from_numpy(xs), [0]
    d = _sqn(xs - xs[0])
    for _ in range(1, min(g, len(xs))):
        idx.append(j := int(np.argmax(d)))
        np.minimum(d, sq - 2 * (xt @ xt[j]).numpy() + sq[j], out=d)
    return xs[idx]


def _partition(xc: np.ndarray, groups: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-level (approximately) nearest-centre partition -> group id (N,), centres (G, P)."""
    def assign(pts, cen):
        cn = _sqn(cen)
        return np.concatenate([np.argmin(cn - 2 * _mm(pts[s:s + 16384], cen.T), 1) for s in range(0, len(pts), 16384)])
    n = len(xc)
    coarse = _kcenter(xc[np.sort(rng.choice(n, min(n, 256), replace=False))], min(16, groups))
    a1, gid, cents = assign(xc, coarse), np.zeros(n, np.int64), []
    for i in range(len(coarse)):
        mem = np.flatnonzero(a1 == i)
        if len(mem):
            gi = max(1, round(groups * len(mem) / n))
            cf = _kcenter(xc[mem[np.sort(rng.choice(len(mem), min(len(mem), 16 * gi), replace=False))]], gi)
            gid[mem] = len(cents) + (assign(xc[mem], cf) if len(cf) > 1 else 0)
            cents.extend(cf)
    used, gid = np.unique(gid, return_inverse=True)
    return gid, np.asarray(cents, dtype=np.float32)[used]


class _Greedy:
    """Exact batched greedy k-center on the CPU (module docstring). x: (N, P) float32, P = 2^j."""

    def __init__(self, x: np.ndarray, k: int, chunk: int = 64, seed: int = 0) -> None:
        n, p = x.shape
        self.x, self.k, self.S = x, k, chunk
        self.kappa = 4 * (p + 16) * _U  # |matmul d^2 - sq_dist| <= kappa (|a| + |b|)^2 (2x margin)
        self.m0 = m0 = x.mean(0, dtype=np.float64).astype(np.float32)  # centring for matmul bounds
        groups = int(np.clip(n // 640, 1, 256))
        gid, self.mu = _partition(x, groups, np.random.default_rng(seed)) if groups > 1 else (np.zeros(n, np.int64), m0[None])
        self.gc = self.mu - m0  # group reference points (G, P), centred
        self.gc2 = _sqn(self.gc)
        order = np.argsort(gid, kind="stable")
        cnt = np.bincount(gid, minlength=len(self.mu))
        gs = np.r_[0, np.cumsum(cnt)]
        loc = x[order]  # (N, P) -> group-local coordinates x' = x - mu_g (error <= u|x'|)
        w = np.empty(n, np.float32)  # x'.g_c
        for g in range(len(self.mu)):
            loc[gs[g]:gs[g + 1]] -= self.mu[g]
            w[gs[g]:gs[g + 1]] = np.einsum("ij,j->i", loc[gs[g]:gs[g + 1]], self.gc[g])
        r2 = _sqn(loc)
        gsort = gid[order]
        o2 = np.lexsort((r2, gsort))  # by group, then radius: chunks are thin radial shells
        order, gsort = order[o2], gsort[o2]
        nchg = -(-cnt // chunk)
        c0 = np.r_[0, np.cumsum(nchg)]
        self.nch = nch = int(c0[-1])
        pos = c0[gsort] * chunk + np.arange(n) - gs[gsort]  # slot of point order[i]
        self.orig = np.full(nch * chunk, -1, np.int64)  # slot -> point index (-1: padding)
        self.orig[pos] = order
        xp = np.zeros((nch * chunk, p), np.float32)
        xp[pos] = loc[o2]
        del loc
        self.Xp = xp.reshape(nch, chunk, p)  # (chunks, S, P)
        self.rn2 = np.zeros(nch * chunk, np.float32)
        self.rn2[pos] = r2[o2]
        self.rn = np.sqrt(self.rn2)
        self.w = np.zeros(nch * chunk, np.float32)
        self.w[pos] = w[o2]
        rr = np.where(self.orig >= 0, self.rn, np.nan).reshape(nch, chunk)
        self.rlo, self.rhi = np.nanmin(rr, 1), np.nanmax(rr, 1)  # annulus of each chunk
        # slack for |c - mu_g| vs r(x) tests: radius rounding + float32 offsets between coordinate frames
        self.rtol = 1e-4 * self.rhi + 64 * _U * float(np.sqrt(self.gc2.max()) + self.rhi.max() + np.abs(m0).sum())
        self.cgrp = np.repeat(np.arange(len(self.mu)), nchg)  # group of each chunk
        self.rho = np.zeros(len(self.mu), np.float32)
        np.maximum.at(self.rho, self.cgrp, self.rhi)
        self.u = np.where(self.orig >= 0, np.inf, -np.inf).astype(np.float32)  # exact part of d^2
        self.hi = self.u.copy()  # upper bound of d^2 = min(u, ahi)
        self.pend = np.full(nch * chunk, -1, np.int64)  # pending centre (index into sel) or -1
        self.alo = np.zeros(nch * chunk, np.float32)  # pending d^2 lies in [alo, ahi]
        self.ahi = np.zeros(nch * chunk, np.float32)
        self.tch = np.zeros(nch, np.int64)  # number of centres applied to each chunk
        self.ub = np.full(nch, np.inf, np.float32)  # max hi per chunk
        self.sel = np.empty(k, np.int64)
        self.cc = np.empty((k, p), np.float32)  # centres, centred coords
        self.ccn = np.empty(k, np.float32)  # their norms
        self.pg, self.pc = np.empty(0, np.int64), np.empty(0, np.int64)  # (group, centre) pairs ...
        self.plo, self.phi = np.empty(0, np.float32), np.empty(0, np.float32)  # ... bounds of |c - mu_g|

    def _add(self, idx: np.ndarray, t: int, radius: float) -> None:
        """Append centres idx (points) at positions t..; keep (group, centre) pairs that may matter."""
        self.sel[t:t + len(idx)] = idx
        self.cc[t:t + len(idx)] = cc = self.x[idx] - self.m0
        self.ccn[t:t + len(idx)] = cn = np.sqrt(_sqn(cc))
        d2 = self.gc2[:, None] + _sqn(cc)[None] - 2 * _mm(self.gc, np.ascontiguousarray(cc.T))  # (G, m)
        e = self.kappa * (np.sqrt(self.gc2)[:, None] + cn[None]) ** 2
        lo = np.sqrt(np.maximum(d2 - e, 0))
        ci, gi = np.nonzero((lo < (self.rho + radius + self.rtol.max())[:, None]).T)  # ordered by centre
        self.pg, self.pc = np.r_[self.pg, gi], np.r_[self.pc, ci + t]
        self.plo, self.phi = np.r_[self.plo, lo[gi, ci]], np.r_[self.phi, np.sqrt(d2[gi, ci] + e[gi, ci])]

    def _exact(self, slots: np.ndarray, cent: np.ndarray) -> np.ndarray:
        return sq_dist(self.x[self.orig[slots]], self.x[self.sel[cent]])

    def _resolve(self, s: np.ndarray) -> None:
        """Fold pending centres of slots s into the exact part."""
        s = s[self.pend[s] >= 0]
        if len(s):
            self.u[s] = np.minimum(self.u[s], self._exact(s, self.pend[s]))
            self.hi[s], self.pend[s] = self.u[s], -1

    def _hits(self, pp: np.ndarray, cc: np.ndarray, lo: np.ndarray, hh: np.ndarray) -> None:
        """Candidate centres cc for slots pp with d^2 in [lo, hh]: keep the provably best one as
        pending, or (if two candidates overlap) fold them into the exact part."""
        new = np.r_[True, pp[1:] != pp[:-1]]  # entries of a slot are contiguous (see _refresh)
        first, seg = np.flatnonzero(new), np.cumsum(new) - 1
        ps = pp[first]
        uu, pe = self.u[ps], self.pend[ps]
        has = pe >= 0
        dup = cc == pe[seg]  # the already pending centre: represented by its stored interval
        h = np.minimum(np.minimum.reduceat(np.where(dup, np.inf, hh), first), uu)
        h = np.where(has, np.minimum(h, self.ahi[ps]), h)  # best upper bound H of each slot
        cand = (lo <= h[seg]) & ~dup
        pcand = has & (self.alo[ps] <= h)
        single = (np.bincount(seg[cand], minlength=len(ps)) + pcand == 1) & (h < uu)
        s = cand & single[seg]  # the unique candidate is a new one: it becomes the pending centre
        q = pp[s]
        self.pend[q], self.alo[q], self.ahi[q], self.hi[q] = cc[s], lo[s], hh[s], hh[s]
        ns = ~single
        rh = cand & ns[seg] & (lo < uu[seg])
        rp = ns & pcand & (self.alo[ps] < uu)
        slots, cent = np.r_[pp[rh], ps[rp]], np.r_[cc[rh], pe[rp]]
        if len(slots):
            np.minimum.at(self.u, slots, self._exact(slots, cent))
        q = ps[ns]
        self.pend[q], self.hi[q] = -1, self.u[q]

    def _pairs(self, chs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, pair index) for the (group, centre) pairs with centres not yet applied to the chunk, passing the annulus test
        max(|c - mu_g| - r_hi, r_lo - |c - mu_g|) < sqrt(ub) (else |x - c| >= d(x) for all x)."""
        out_ch, out_c, act = [], [], chs[:0]
        tc = self.tch[chs]
        tvs = np.unique(tc)
        cuts = np.searchsorted(self.pc, np.r_[tvs, self.pc[-1] + 1])
        for tv, s0, hi_c in zip(tvs, cuts[:-1], cuts[1:]):  # pairs in [tv, next tv) are new for all
            # chunks last refreshed at <= tv
            act = np.r_[act, chs[tc == tv]]
            act = act[np.argsort(self.cgrp[act], kind="stable")]
            g = self.cgrp[act]
            gcnt = np.bincount(g, minlength=len(self.rho))
            gst = np.r_[0, np.cumsum(gcnt)]
            gub = np.zeros(len(self.rho), np.float32)
            np.maximum.at(gub, g, self.ub[act])
            pg = self.pg[s0:hi_c]
            sp = np.flatnonzero((gcnt[pg] > 0) & (self.plo[s0:hi_c] < self.rho[pg] + np.sqrt(gub[pg]) * 1.000001 + self.rtol.max())) + s0
            reps = gcnt[self.pg[sp]]
            pair = np.repeat(sp, reps)
            ch = act[gst[self.pg[pair]] + np.arange(len(pair)) - np.repeat(np.cumsum(reps) - reps, reps)]
            lb = np.maximum(self.plo[pair] - self.rhi[ch], self.rlo[ch] - self.phi[pair])
            keep = lb < np.sqrt(self.ub[ch]) * 1.000001 + self.rtol[ch]
            out_ch.append(ch[keep])
            out_c.append(pair[keep])
        return np.concatenate(out_ch), np.concatenate(out_c)

    def _refresh(self, chs: np.ndarray, t: int) -> None:
        """Apply all pending centres (< t) to the chunks chs."""
        ch, cid = self._pairs(chs)  # cid: indices of (group, centre) pairs
        S, kap, hits = self.S, self.kappa, []
        if len(ch):
            o = np.argsort(ch, kind="stable")
            ch, cid = ch[o], cid[o]
            first = np.flatnonzero(np.r_[True, ch[1:] != ch[:-1]])
            uch, rc = ch[first], np.diff(np.r_[first, len(ch)])
            bucket = np.searchsorted(_EDGES, rc)  # chunks with a similar number of centres
            for b in np.unique(bucket):
                w = np.flatnonzero(bucket == b)
                cb, nc, R = uch[w], rc[w], int(rc[w].max())
                col = np.arange(R)
                pair = cid[first[w][:, None] + np.minimum(col, nc[:, None] - 1)]  # (nb, R), padded
                cent = self.pc[pair]
                # x'.(c - mu_g) = x'.c_c - x'.g_c with c_c, g_c centred; |c - mu_g|^2 in [cn2 -+ cw]
                a = torch.bmm(torch.from_numpy(self.Xp[cb]), torch.from_numpy(self.cc[cent]).transpose(1, 2)).numpy()
                lo2, hi2 = self.plo[pair] ** 2, self.phi[pair] ** 2
                pidx = cb[:, None] * S + np.arange(S)  # (nb, S) slots
                gn = np.sqrt(self.gc2[self.cgrp[cb]])[:, None]
                e = kap * (self.rn[pidx] + gn + float(self.ccn[cent].max())) ** 2  # (nb, S) >= error
                # hit <=> lower bound of d^2 = |x'|^2 + |c - mu|^2 - 2 x'.(c - mu) - e < hi
                arow = 0.5 * (self.rn2[pidx] + 2 * self.w[pidx] - self.hi[pidx] * (1 + 8 * _U) - e)
                bcol = np.where(col < nc[:, None], 0.5 * lo2, np.inf)
                f = np.flatnonzero(a > arow[:, :, None] + bcol[:, None, :])  # (flat nonzero: 10x faster)
                if len(f):
                    i, f = np.divmod(f, S * R)
                    j, m = np.divmod(f, R)
                    sl, c = pidx[i, j], cent[i, m]
                    e = kap * (self.rn[sl] + gn[i, 0] + self.ccn[c]) ** 2
                    base = self.rn2[sl] - 2 * (a[i, j, m] - self.w[sl])
                    hits.append((sl, c, base + lo2[i, m] - e, base + hi2[i, m] + e))
        if hits:
            self._hits(*(np.concatenate(z) for z in zip(*hits)))
        self.tch[chs] = t
        self.ub[chs] = self.hi.reshape(self.nch, S)[chs].max(1)

    def _simulate(self, sp: np.ndarray, tau: float, t: int, chain: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Greedy inside the batch sp (slots sorted by point index) while its max d^2 > tau.
        Returns accepted batch positions (in pick order) and the batch's updated d^2."""
        d = self.u[sp].copy()  # (B,) exact
        pts = self.orig[sp]
        xs = self.x[pts]
        xc = xs - self.m0
        ns = np.sqrt(_sqn(xc))
        g2 = 2 * _mm(xc, np.ascontiguousarray(xc.T))  # (B, B)

        def lower(a, b=slice(None)):  # lower bounds of sq_dist between batch positions a and b
            na, nb = ns[a, None], ns[None, b]
            return (na * na + nb * nb - g2[a][:, b]) - self.kappa * (na + nb) ** 2
        acc: list[int] = []
        while t + len(acc) < self.k:
            top = np.argsort(-d, kind="stable")[:chain]  # by value, ties: lowest point index first
            n_ok = min(int(np.count_nonzero(d[top] > tau)), self.k - t - len(acc))
            if n_ok == 0:
                break
            top = top[:n_ok]
            # take the longest prefix in which no pick can lower the value of a later one
            # (a pick's own value becomes 0, so later values must also stay > 0)
            hit = (np.tril(lower(top, top) < d[top][:, None], -1).any(1) | (d[top] <= 0))[1:]
            a = top[:1 + int(np.argmax(hit)) if hit.any() else n_ok]
            acc.extend(a.tolist())
            i, j = np.nonzero(lower(a) < d[None])
            np.minimum.at(d, j, sq_dist(xs[j], xs[a[i]]))
        return np.asarray(acc, dtype=np.int64), d

    def _top(self, b: int, t: int, over: float) -> tuple[float, np.ndarray, int]:
        """Refresh the stale chunks that may hold one of the top b + 1 values; returns tau (the
        (b+1)-th largest upper bound, -inf if b = N), the top-b slots and the iteration count."""
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

    def _dense_step(self, t: int) -> None:
        """One plain greedy step over all points (fallback for long runs of ties at tau)."""
        real = np.flatnonzero(self.orig >= 0)
        self._top(len(self.x), t, 1.0)
        self._resolve(real)
        m = float(self.u[real].max())
        c = int(self.orig[real[self.u[real] == m]].min())
        self._add(np.array([c]), t, float(np.sqrt(m * (1 + 8 * _U))))
        self.u[real] = self.hi[real] = np.minimum(self.u[real], sq_dist(self.x[self.orig[real]], self.x[c]))
        self.tch[:] = t + 1
        self.ub = self.hi.reshape(self.nch, self.S).max(1)

    def run(self, start: int, batch: int = 1024, min_batch: int = 256, max_batch: int = 4096) -> np.ndarray:
        n, k, u, hi = len(self.x), self.k, self.u, self.hi
        self._add(np.array([start]), 0, np.inf)
        t, b, over = 1, min_batch, 4.0
        while t < k:
            b = min(b, n)
            tau, sp, it = self._top(b, t, over)
            over = min(16.0, 2 * over) if it > 2 else max(1.0, over / 1.5) if it <= 1 else over
            self._resolve(sp)
            if tau <= 0 and u[sp].max() <= 0:  # every d(x) = 0: argmax is point 0 from now on
                self.sel[t:] = 0
                break
            radius = float(np.sqrt(max(float(u[sp].max()), tau) * (1 + 8 * _U)))  # >= every d(x) now
            acc, d = self._simulate(sp, tau, t)
            u[sp] = hi[sp] = d
            if len(acc):
                self._add(self.orig[sp[acc]], t, radius)
                t += len(acc)
                b = int(np.clip(2 * len(acc), min_batch, batch))
            elif b < min(n, max_batch):  # the batch maximum ties with tau: widen the batch
                b *= 2
            else:
                self._dense_step(t)
                t += 1
        return self.sel


def greedy_coreset_fast(features: np.ndarray, k: int, start: int) -> np.ndarray:
    """Exact greedy k-center (same picks as ``greedy_coreset_naive``), single-threaded."""
    x = _pad_pow2(features)
    if k <= 1:
        return np.array([start], dtype=np.int64)[:k]
    nth = torch.get_num_threads()
    torch.set_num_threads(1)  # many small matmuls: threads only add sync latency on a busy CPU
    try:
        return _Greedy(x, k).run(start)
    finally:
        torch.set_num_threads(nth)


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
    return torch.from_numpy(greedy_coreset_fast(psi.numpy(), k, start))


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
