"""Streaming per-position Gaussians: equal to the batch statistics (np.cov), inverse Cholesky, Mahalanobis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flawmap.components import gaussian as gs
from flawmap.errors import ConfigError


def _data(p: int = 3, n: int = 37, d: int = 4, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(p, d, d, generator=g)
    return torch.randn(p, n, d, generator=g) @ mix + offset  # (P, N, D), correlated dims


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("batches", [[37], [1] * 37, [5, 1, 20, 11]])
def test_streaming_equals_batch_covariance(batches: list[int], offset: float) -> None:
    x = _data(offset=offset)
    acc = gs.StreamingGaussian(3, 4)
    start = 0
    for b in batches:
        acc.update(x[:, start:start + b])
        start += b
    assert acc.n == 37
    xd = x.double().numpy()
    mean = xd.mean(axis=1)
    cov = np.stack([np.cov(xd[p], rowvar=False) for p in range(3)]) + 0.01 * np.eye(4)
    np.testing.assert_allclose(acc.mean.numpy(), mean, rtol=1e-5, atol=1e-4 * (1 + offset) * 1e-2)
    np.testing.assert_allclose(acc.covariance_(0.01).numpy(), cov, rtol=1e-4, atol=1e-4)


def test_covariance_needs_two_samples() -> None:
    acc = gs.StreamingGaussian(2, 3)
    acc.update(torch.zeros(2, 1, 3))
    with pytest.raises(ConfigError, match="at least 2"):
        acc.covariance_(0.01)


def test_update_shape_mismatch() -> None:
    with pytest.raises(ConfigError, match="positions"):
        gs.StreamingGaussian(2, 3).update(torch.zeros(2, 4, 5))


def test_inverse_cholesky_and_mahalanobis() -> None:
    x = _data()
    acc = gs.StreamingGaussian(3, 4)
    acc.update(x)
    mean = acc.mean.clone()
    cov = acc.covariance_(0.01).clone()
    inv_chol = gs.inverse_cholesky_(acc.m2, chunk=2)  # in place
    assert inv_chol.data_ptr() == acc.m2.data_ptr()
    precision = inv_chol.transpose(1, 2).double() @ inv_chol.double()  # L^-T L^-1 = Sigma^-1
    np.testing.assert_allclose(precision.numpy(), np.linalg.inv(cov.double().numpy()), rtol=1e-4, atol=1e-4)
    q = _data(n=5, offset=0.5)
    got = gs.mahalanobis(q, mean, inv_chol, chunk=2).numpy()  # (P, B)
    prec = np.linalg.inv(cov.double().numpy())
    for p in range(3):
        for b in range(5):
            delta = q[p, b].double().numpy() - mean[p].double().numpy()
            assert got[p, b] == pytest.approx(np.sqrt(delta @ prec[p] @ delta), rel=1e-4)


def test_not_positive_definite_is_reported() -> None:
    cov = torch.zeros(2, 3, 3)
    with pytest.raises(ConfigError, match="positive definite"):
        gs.inverse_cholesky_(cov)


def test_memory_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # WRN50, d=550, 56 x 56 positions: 3.8 GiB of covariances
    assert gs.gaussian_memory_bytes(56 * 56, 550) == 56 * 56 * 550 * 551 * 4
    monkeypatch.setattr(gs, "available_memory_bytes", lambda device: 2 * 1024**3)
    with pytest.raises(ConfigError, match=r"need 5\.27 GiB \(3\.54 GiB of covariances \+ inversion work\).*only 2\.00 GiB"):
        gs.check_memory(56 * 56, 550, torch.device("cpu"))
    need = gs.check_memory(56 * 56, 100, torch.device("cpu"))
    assert need == gs.gaussian_memory_bytes(56 * 56, 100) + 3 * 256 * 100 * 100 * 8
    assert gs.available_memory_bytes(torch.device("cpu")) > 0
