"""Exact k smallest distances from queries to the rows of chosen images of a fixed bank (SPADE's gallery).

The bank F (N, P, D) holds P feature rows per training image; a search takes queries q (Q, D), a subset
of K images and k, and returns for every query the k smallest Euclidean distances among those K P rows.
Brute force costs Q K P D multiply-adds (189 G for one SPADE test image on bottle at K = 50). Two exact
paths, chosen in one place (``use_bf16_filter``):

* dense (CUDA; CPUs without fast bf16): fp32 ``||g||^2 - 2 q.g`` of rows centred on the bank mean (one
  addmm per block into a reused buffer; ``||g||^2`` precomputed), running k smallest, ``+ ||q||^2``,
  clamp, sqrt.
* bf16 filter, then exact check (CPUs with AMX / AVX512-BF16, where a bf16 matmul runs ~10x faster than
  fp32). All vectors are centred on the bank mean mu and rounded to bf16:
  q~ = bf16(q - mu), with e_q = ||q - mu - q~|| (likewise g~, e_g). One bf16 matmul of augmented rows
  [-2 g~, 1, 1, 1, s_g] . [q~, s_q, 1, 1, 1] (s = ||x~||^2 split into three bf16 parts) gives A ~ ||q~ - g~||^2
  with an fp32 accumulation error <= eta = 4 n 2^-24 (||q~|| + max ||g~||)^2 + split residuals (n = D + 6)
  and a bf16 output rounding <= 2^-8 |A|. With ||q - g|| within e_q + e_g of ||q~ - g~||:

      ||q - g|| <= UB(A) = sqrt((1 + 2^-7) A + eta) + e,   ||q - g|| >= LB(A) = sqrt(A / (1 + 2^-7) - eta) - e

  (e = e_q + max e_g; margins 2x the worst case). Per test image, block by block (one image's P rows
  against a chunk of queries), the k smallest minima over tiles of 64 gallery rows bound the k-th
  distance by U(q) (k distinct rows); a pair can be among the k nearest only if LB(A) <= U(q), i.e.
  A <= T(q) = (1 + 2^-7)((U + e)^2 + eta): on bottle ~10 candidates per query out of 156,800. Those
  pairs get their exact fp32 distance ||q - g|| (direct differences) and are merged into the running k
  smallest. So the result is brute force's up to fp32 rounding, ties included; a block where the
  candidates are too many for a sparse check (near-constant features) is checked densely instead.
  The bf16 comparisons run on the int16 bit patterns (same order for non-negative bf16; negative A
  is a candidate whenever T >= 0).

Memory: the bank + ``extra_bytes`` (fp32 norms; on the filter path a bf16 copy of the augmented bank,
~0.5x the bank), and per search one block of at most max(chunk_elems, P) entries.
"""

from __future__ import annotations

import torch

from ..device import one_cpu_thread
from .knn import sq_dists

TILE = 64  # gallery rows per tile (the filter's first-level minimum)
_U = 2.0 ** -7  # 2x the bf16 unit roundoff (2^-8)
_E32 = 2.0 ** -24  # fp32 unit roundoff
_AUG = 6  # augmented columns: three bf16 parts of ||x~||^2 and three ones
_PAIRS = 1 << 16  # query-gallery pairs per gather in the exact check
_DENSE_SHARE = 8  # a block whose candidates exceed 1/8 of its (rows with candidates) x P is checked densely
#: below this many query x gallery pairs per search the filter's fixed costs exceed its gain (measured: break-even
#: ~5M pairs on i.i.d. Gaussian rows, 1 thread); such searches run dense
MIN_FILTER_PAIRS = 1 << 22


def use_bf16_filter(device: torch.device | str) -> bool:
    """The one decision between the two exact paths: the bf16 filter on CPUs with native bf16 matmul
    (AMX or AVX512-BF16), the dense fp32 search elsewhere (CUDA; fp32 is fast there)."""
    if torch.device(device).type != "cpu":
        return False
    cpu = torch.cpu
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())  # type: ignore[attr-defined]
    except AttributeError:  # private probes renamed in a later torch: the safe choice
        return False


def _split3(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 s (M,) -> three bf16 parts (M, 3) summing to s up to the returned |residual| (M,) (~2^-24 s)."""
    parts, r = [], s
    for _ in range(3):
        h = r.to(torch.bfloat16)
        parts.append(h)
        r = r - h.float()  # exact (Sterbenz)
    return torch.stack(parts, 1), r.abs()


def _rounded(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred fp32 rows x (M, D) -> bf16 rows x~, ||x~||^2 (fp32), e = bound of ||x - x~|| incl. centring error."""
    xt = x.to(torch.bfloat16)
    xtf = xt.float()
    err = (x - xtf).norm(dim=1) * (1 + 1e-4) + 2.0 ** -22 * x.norm(dim=1)
    return xt, xtf.pow(2).sum(1), err


def _topk_merge(best: torch.Tensor, rows: torch.Tensor, d2: torch.Tensor) -> None:
    """best (Q, k) running k smallest; fold in values d2 (n,) of query rows (n,), in place."""
    k = best.shape[1]
    if k == 1:
        best[:, 0].scatter_reduce_(0, rows, d2, "amin")
        return
    rows, order = torch.sort(rows, stable=True)
    d2 = d2[order]
    uniq, counts = torch.unique_consecutive(rows, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(rows), device=rows.device) - torch.repeat_interleave(starts, counts)
    pad = torch.full((len(uniq), int(counts.max())), float("inf"), device=best.device)
    pad[torch.repeat_interleave(torch.arange(len(uniq), device=rows.device), counts), pos] = d2
    merged = torch.cat([best[uniq], pad], 1)
    best[uniq] = torch.topk(merged, k, dim=1, largest=False).values


class GalleryIndex:
    """Exact k smallest distances to the rows of chosen images of ``bank`` (N, P, D); see the module docstring.

    Built from the bank alone (its owner keeps it next to the fitted bank; only the bank is saved).
    ``bf16_filter`` None: ``use_bf16_filter(bank.device)`` and searches of at least ``MIN_FILTER_PAIRS`` pairs;
    True/False force a path at any size (tests, benchmarks)."""

    def __init__(self, bank: torch.Tensor, *, chunk_elems: int = 1 << 24, bf16_filter: bool | None = None) -> None:
        self.bank = bank  # F (N, P, D) fp32
        self.chunk_elems = int(chunk_elems)
        n, p, d = bank.shape
        self.mu = bank.mean(dim=(0, 1))  # centring: exact in the maths, smaller roundoff (matmul forms)
        self.sq = torch.stack([(b - self.mu).pow(2).sum(1) for b in bank])  # ||F_i,p - mu||^2 (N, P)
        self.filter = use_bf16_filter(bank.device) if bf16_filter is None else bool(bf16_filter)
        self.min_pairs = MIN_FILTER_PAIRS if bf16_filter is None else 0
        self.tiles = -(-p // TILE)
        if not self.filter:
            return
        aug = torch.zeros(n, self.tiles * TILE, d + _AUG, dtype=torch.bfloat16, device=bank.device)
        aug[:, p:, d + 3] = float("inf")  # padding rows: A = +inf, never a candidate
        gmax = eg = r3 = 0.0
        for i in range(n):  # one image at a time: temporaries of one image only
            gt, n2, err = _rounded(bank[i] - self.mu)
            parts, res = _split3(n2)
            aug[i, :p, :d] = gt * -2
            aug[i, :p, d:d + 3] = 1
            aug[i, :p, d + 3:] = parts
            gmax, eg, r3 = max(gmax, float(n2.max())), max(eg, float(err.max())), max(r3, float(res.max()))
        self.aug, self.gmax, self.eg, self.r3 = aug, gmax ** 0.5, eg, r3  # G_aug (N, P', D + 6), bounds

    @staticmethod
    def extra_bytes(n: int, p: int, d: int, device: torch.device | str) -> int:
        """Memory an index adds to a bank (N, P, D): norms, and the bf16 augmented copy on the filter path."""
        aug = n * (-(-p // TILE) * TILE) * (d + _AUG) * 2 if use_bf16_filter(device) else 0
        return n * p * 4 + aug

    @torch.no_grad()
    def search(self, queries: torch.Tensor, images: torch.Tensor, k: int) -> torch.Tensor:
        """queries (Q, D), images (K,) bank indices -> the k smallest distances of each query to the K P
        rows of those images (Q, k), ascending. Requires k <= K P."""
        n_rows = len(images) * self.bank.shape[1]
        if not 1 <= k <= n_rows:
            raise ValueError(f"k={k} is out of range; allowed: [1, {n_rows}] ({len(images)} images x {self.bank.shape[1]} rows)")
        queries = queries.to(self.bank.device, torch.float32)
        if self.filter and k <= len(images) * self.tiles and len(queries) * n_rows >= self.min_pairs:
            # (k above the tiles: no finite bound, nothing to prune)
            d2 = self._filtered(queries, images, k)
        else:
            d2 = self._dense(queries, images, k)
        return torch.sort(d2, dim=1).values.clamp_(min=0.0).sqrt_()

    # ---- dense fp32 ------------------------------------------------------------------------------
    def _dense(self, queries: torch.Tensor, images: torch.Tensor, k: int) -> torch.Tensor:
        """Brute force on the bracket ||g||^2 - 2 q.g of centred rows (one addmm per block of whole images
        into a reused buffer), running k smallest; ||q||^2 is added to the survivors only. -> d^2 (Q, k)."""
        bank, sq, p = self.bank, self.sq, self.bank.shape[1]
        queries = queries - self.mu
        per = max(1, min(len(images), self.chunk_elems // max(1, p * len(queries))))  # images per block
        q_step = max(1, self.chunk_elems // (per * p))
        out = []
        for q0 in range(0, len(queries), q_step):
            q = queries[q0:q0 + q_step]  # (q, D)
            buf = torch.empty(len(q), per * p, device=bank.device)
            best: torch.Tensor | None = None  # running k smallest brackets (q, <=k)
            for s in range(0, len(images), per):
                nb = images[s:s + per]
                g, g_sq = (bank[nb[0]], sq[nb[0]]) if len(nb) == 1 else (bank[nb].flatten(0, 1), sq[nb].flatten())
                g = g - self.mu  # (per P, D), one pass: ~1/(2 q) of the matmul
                part = torch.addmm(g_sq.unsqueeze(0), q, g.T, beta=1.0, alpha=-2.0, out=buf[:, :len(g)])
                if k == 1:
                    part = part.amin(dim=1, keepdim=True)
                    best = part if best is None else torch.minimum(best, part)
                else:
                    part = torch.topk(part, min(k, part.shape[1]), dim=1, largest=False, sorted=False).values
                    if best is not None:
                        part = torch.cat([best, part], dim=1)
                        part = torch.topk(part, min(k, part.shape[1]), dim=1, largest=False, sorted=False).values
                    best = part
            assert best is not None
            out.append(best.add_(q.pow(2).sum(dim=1, keepdim=True)))
        return torch.cat(out)

    # ---- bf16 filter + exact check ---------------------------------------------------------------
    def _filtered(self, queries: torch.Tensor, images: torch.Tensor, k: int) -> torch.Tensor:
        """-> exact squared distances (Q, k) (unsorted) via the bf16 filter; see the module docstring."""
        bank, aug, d = self.bank, self.aug, self.bank.shape[2]
        tiles, dev = self.tiles, bank.device
        qt, n2, eq = _rounded(queries - self.mu)
        parts, r3q = _split3(n2)
        q_aug_t = torch.cat([qt, parts, torch.ones(len(qt), 3, dtype=torch.bfloat16, device=dev)], 1).T.contiguous()
        eta = 4 * (d + _AUG) * _E32 * (n2.sqrt() + self.gmax) ** 2 + r3q + self.r3 + 1e-30  # (Q,)
        e = eq + self.eg  # (Q,)
        best = torch.full((len(queries), k), float("inf"), device=dev)  # exact k smallest d^2 (Q, k)
        step = max(1, min(len(queries), self.chunk_elems // (tiles * TILE)))  # queries per block
        for q0 in range(0, len(queries), step):
            cols = slice(q0, q0 + step)
            qa, eta_c, e_c = q_aug_t[:, cols], eta[cols], e[cols]
            nq = qa.shape[1]
            buf = torch.empty(tiles * TILE, nq, dtype=torch.bfloat16, device=dev)
            low = torch.full((k, nq), float("inf"), device=dev)  # k smallest tile minima of A so far
            for img in images.tolist():
                a = torch.mm(aug[img], qa, out=buf)  # A (P', q) ~ ||q~ - g~||^2, bf16
                ai = a.view(torch.int16).view(tiles, TILE, nq)
                tmin = ai.amin(dim=1)  # (tiles, q) int16: order of non-negative bf16
                with one_cpu_thread(dev):  # small ops: parallel regions cost more than they save (stalls under load)
                    cand = self._candidates(ai, tmin, low, eta_c, e_c, k)
                if cand is not None:
                    self._check(queries[cols], img, *cand, best[cols])
        return best

    @staticmethod
    def _candidates(ai: torch.Tensor, tmin: torch.Tensor, low: torch.Tensor, eta_c: torch.Tensor, e_c: torch.Tensor,
                    k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One block (an image x a chunk of q queries): update the bound ``low`` (k, q) in place from the tile
        minima tmin (tiles, q); -> the candidate pairs of A (ai: int16 view (tiles, TILE, q)) as (query in the
        chunk, gallery row), or None."""
        tmf = tmin.view(torch.bfloat16).float()
        if k == 1:
            torch.minimum(low, tmf.amin(dim=0, keepdim=True), out=low)
        else:
            low.copy_(torch.topk(torch.cat([low, tmf]), k, dim=0, largest=False).values)
        u = (low.amax(dim=0).clamp(min=0) * (1 + _U) + eta_c).sqrt() + e_c  # U(q) >= k-th distance
        thr = ((1 + _U) * ((u + e_c) ** 2 + eta_c) * (1 + _U)).clamp(max=3e38)  # T(q), rounded up below
        thr_i = thr.to(torch.bfloat16).view(torch.int16)  # inf stays out: 3e38 < inf
        t, r = (tmin <= thr_i).nonzero(as_tuple=True)  # candidate (tile, query)
        if not len(t):
            return None
        rr, cc = (ai[t, :, r] <= thr_i[r, None]).nonzero(as_tuple=True)  # candidate rows in those tiles
        return r[rr], t[rr] * TILE + cc

    def _check(self, q: torch.Tensor, img: int, qrow: torch.Tensor, grow: torch.Tensor, best: torch.Tensor) -> None:
        """Exact fp32 d^2 of candidate pairs (q[qrow], F_img[grow]) merged into best (a view, in place)."""
        g = self.bank[img]
        rows = torch.unique(qrow)
        if len(qrow) * _DENSE_SHARE > len(rows) * len(g):  # dense for the rows with candidates (centred: accurate)
            d2 = sq_dists(q[rows] - self.mu, g - self.mu, self.sq[img])  # (rows, P)
            kk = min(best.shape[1], d2.shape[1])
            low = torch.topk(d2, kk, dim=1, largest=False).values
            _topk_merge(best, rows.repeat_interleave(kk), low.flatten())
            return
        with one_cpu_thread(g.device):  # gathers of a few thousand pairs
            for s in range(0, len(qrow), _PAIRS):
                qi, gi = qrow[s:s + _PAIRS], grow[s:s + _PAIRS]
                _topk_merge(best, qi, (q[qi] - g[gi]).pow(2).sum(1))
