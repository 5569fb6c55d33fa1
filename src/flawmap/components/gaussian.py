"""Per-position multivariate Gaussians (PaDiM): streaming mean/covariance and Mahalanobis distance.

Layout: P patch positions, each with a D-dimensional embedding. A batch is x (P, B, D).
Fitting never holds all training embeddings: :class:`StreamingGaussian` merges batch statistics
with the parallel update of Chan, Golub & LeVeque (mean and centred scatter M2), which is
numerically stable in float32. The learned model is the mean mu (P, D) and the inverse Cholesky
factor L^-1 (P, D, D) of Sigma = L L^T, so that (x - mu)^T Sigma^-1 (x - mu) = ||L^-1 (x - mu)||^2.
"""

from __future__ import annotations

import math

import torch

from ..device import available_memory_bytes, one_cpu_thread
from ..errors import ConfigError

_GIB = 1024**3
#: covariances inverted per float64 chunk in :func:`inverse_cholesky_`
INVERSE_CHUNK = 256


def gaussian_memory_bytes(positions: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the (P, D, D) covariance buffer plus the (P, D) mean: what PaDiM keeps in memory."""
    elem = torch.empty((), dtype=dtype).element_size()
    return positions * dim * (dim + 1) * elem


def check_memory(positions: int, dim: int, device: torch.device, what: str = "covariances") -> int:
    """Raise ConfigError before allocating if PaDiM's Gaussians cannot fit; returns the bytes needed.

    Needed: the (P, D, D) float32 buffer and mean, plus the float64 work of one chunk of
    :func:`inverse_cholesky_` (copy, factor, inverse: 3 x chunk x D x D x 8 bytes).
    """
    buffer = gaussian_memory_bytes(positions, dim)
    need = buffer + 3 * min(positions, INVERSE_CHUNK) * dim * dim * 8
    have = available_memory_bytes(device)
    if need > have:
        raise ConfigError(
            f"{what}: {positions} positions x {dim}x{dim} float32 matrices need {need / _GIB:.2f} GiB "
            f"({buffer / _GIB:.2f} GiB of covariances + inversion work) but only {have / _GIB:.2f} GiB is free "
            f"on {device}; reduce the embedding dimension d, the image size, or use a device with more memory"
        )
    return need


class StreamingGaussian:
    """Running per-position mean mu (P, D) and centred scatter M2 (P, D, D), updated batch by batch."""

    def __init__(self, positions: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.mean = torch.zeros(positions, dim, device=device)  # mu (P, D)
        self.m2 = torch.zeros(positions, dim, dim, device=device)  # sum (x - mu)(x - mu)^T (P, D, D)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch x (P, B, D) of B samples per position."""
        p, b, d = x.shape
        if (p, d) != tuple(self.mean.shape):
            raise ConfigError(f"batch has {p} positions x {d} dims; the accumulator expects {tuple(self.mean.shape)}")
        x = x.to(self.mean.device, torch.float32).contiguous()
        n_a, n = self.n, self.n + b
        mean_b = x.mean(dim=1)  # (P, D)
        delta = mean_b - self.mean  # (P, D)
        # M2 <- M2 + sum_i (x_i - mean_b)(x_i - mean_b)^T + n_a b / n * delta delta^T, as ONE in-place
        # batched matmul on the rows [x - mean_b ; sqrt(n_a b / n) delta]  (P, B+1, D)
        rows = torch.cat([x - mean_b.unsqueeze(1), delta.unsqueeze(1) * math.sqrt(n_a * b / n)], dim=1)
        self.m2.baddbmm_(rows.transpose(1, 2), rows)
        self.mean.add_(delta, alpha=b / n)
        self.n = n

    @classmethod
    def resume(cls, n: int, mean: torch.Tensor, covariance: torch.Tensor, eps: float = 0.0) -> StreamingGaussian:
        """The accumulator of a finished fit: ``n`` samples, mean mu (P, D), covariance Sigma (P, D, D) as
        ``covariance_(eps)`` returned it; ``update`` then goes on as if the fit had never stopped."""
        if n < 2:
            raise ConfigError(f"resuming needs the sample count of the fit (>= 2); got {n}")
        acc = cls(mean.shape[0], mean.shape[1], mean.device)
        acc.n = int(n)
        acc.mean.copy_(mean)
        m2 = covariance.double().clone()
        if eps:
            m2.diagonal(dim1=1, dim2=2).sub_(eps)
        acc.m2.copy_(m2.mul_(n - 1))
        return acc

    def covariance_(self, eps: float = 0.0) -> torch.Tensor:
        """Unbiased covariance Sigma = M2 / (n - 1) + eps I, computed IN PLACE in the M2 buffer (P, D, D)."""
        if self.n < 2:
            raise ConfigError(f"a covariance needs at least 2 samples; got {self.n}")
        cov = self.m2.div_(self.n - 1)
        if eps:
            cov.diagonal(dim1=1, dim2=2).add_(eps)
        return cov


@torch.no_grad()
def inverse_cholesky_(cov: torch.Tensor, chunk: int = INVERSE_CHUNK) -> torch.Tensor:
    """Overwrite each Sigma_p (P, D, D) with L_p^-1 where Sigma_p = L_p L_p^T (float64 per chunk)."""
    with one_cpu_thread(cov.device):
        return _inverse_cholesky(cov, chunk)


def _inverse_cholesky(cov: torch.Tensor, chunk: int) -> torch.Tensor:
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=cov.device)
    for s in range(0, cov.shape[0], chunk):
        block = cov[s:s + chunk].double()
        chol, info = torch.linalg.cholesky_ex(block)
        if bool((info != 0).any()):
            raise ConfigError(f"covariance at position {s + int(info.nonzero()[0, 0])} is not positive definite; "
                              "increase the regularisation eps")
        cov[s:s + chunk] = torch.linalg.solve_triangular(chol, eye, upper=False).to(cov.dtype)
    return cov


@torch.no_grad()
def covariance_from_inverse_cholesky(inv_chol: torch.Tensor, chunk: int = INVERSE_CHUNK) -> torch.Tensor:
    """The inverse of :func:`inverse_cholesky_`: L^-1 (P, D, D) -> Sigma = L L^T (P, D, D) float64 (a new
    tensor), solved per float64 chunk. Lets a fitted model take more samples (``StreamingGaussian.resume``)."""
    d = inv_chol.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=inv_chol.device)
    out = torch.empty(inv_chol.shape, dtype=torch.float64, device=inv_chol.device)
    with one_cpu_thread(inv_chol.device):
        for s in range(0, inv_chol.shape[0], chunk):
            chol = torch.linalg.solve_triangular(inv_chol[s:s + chunk].double(), eye, upper=False)  # L (p, D, D)
            out[s:s + chunk] = chol @ chol.transpose(1, 2)
    return out


@torch.no_grad()
def mahalanobis(x: torch.Tensor, mean: torch.Tensor, inv_chol: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """sqrt((x - mu)^T Sigma^-1 (x - mu)) for x (P, B, D), mu (P, D), L^-1 (P, D, D) -> (P, B)."""
    out = []
    for s in range(0, x.shape[0], chunk):
        # contiguous: a permuted (P, B, D) view sends bmm down a ~10x slower strided path
        delta = (x[s:s + chunk] - mean[s:s + chunk].unsqueeze(1)).contiguous()  # (p, B, D)
        z = torch.bmm(delta, inv_chol[s:s + chunk].transpose(1, 2))  # rows (L^-1 (x - mu))^T  (p, B, D)
        out.append(z.pow_(2).sum(dim=2).sqrt_())  # (p, B)
    return torch.cat(out)
