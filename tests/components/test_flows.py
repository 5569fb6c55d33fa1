"""2D affine coupling flow: exact inverse and log-determinant equal to the numerical Jacobian's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flawmap.components.flows import CouplingStep, Flow2d, gaussian_nll


def _random_flow(channels: int, steps: int = 4, seed: int = 0) -> Flow2d:
    torch.manual_seed(seed)
    flow = Flow2d(channels, steps=steps, hidden_ratio=1.0, clamp=2.0, generator=torch.Generator().manual_seed(seed))
    for step in flow.steps:  # leave the identity start: non-trivial scales, shifts and affines
        nn.init.normal_(step.subnet[-1].weight, std=0.5)
        nn.init.normal_(step.subnet[-1].bias, std=0.5)
        nn.init.normal_(step.log_scale, std=0.2)
        nn.init.normal_(step.shift, std=0.2)
    return flow.double()


@pytest.mark.parametrize("channels", [4, 5])
def test_inverse_of_forward_is_identity(channels):
    flow = _random_flow(channels)
    x = torch.randn(3, channels, 6, 5, dtype=torch.float64)
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-10)
    assert torch.allclose(flow(flow.inverse(z))[0], z, atol=1e-10)


@pytest.mark.parametrize("channels", [4, 3])
def test_logdet_matches_numerical_jacobian(channels):
    flow = _random_flow(channels, steps=3, seed=1)
    shape = (1, channels, 3, 3)
    x = torch.randn(shape, dtype=torch.float64)
    _, logdet = flow(x)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(shape))[0].flatten(), x.flatten())
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    assert torch.allclose(logdet[0], logabs, atol=1e-8)


def test_subnet_kernels_alternate_and_start_at_identity():
    flow = Flow2d(6, steps=4, hidden_ratio=0.5, generator=torch.Generator().manual_seed(0))
    kernels = [step.subnet[0].kernel_size[0] for step in flow.steps]
    assert kernels == [3, 1, 3, 1]
    assert flow.steps[0].subnet[0].out_channels == 3  # hidden = ratio * C
    x = torch.randn(2, 6, 4, 4)
    z, logdet = flow(x)  # zero-initialised last convs and affines: a pure channel permutation
    assert torch.equal(logdet, torch.zeros(2))
    assert torch.allclose(z.sort(dim=1).values, x.sort(dim=1).values)


def test_clamp_bounds_the_log_scale():
    step = CouplingStep(4, 4, 3, clamp=0.5, perm=torch.arange(4))
    nn.init.constant_(step.subnet[-1].bias, 100.0)
    _, logdet = step(torch.randn(1, 4, 2, 2))
    assert float(logdet.detach()) <= 0.5 * 2 * 4 + 1e-5  # |s| < clamp on C_b * h * w = 8 entries


def test_gaussian_nll():
    z = torch.ones(2, 3, 2, 2)
    assert torch.allclose(gaussian_nll(z, torch.tensor([0.0, 1.0])), torch.tensor([6.0, 5.0]))


def test_training_path_equals_inference_path_and_its_gradient():
    """The one-write permuted concatenation (training) and cat + gather (inference, ONNX) agree; its
    hand-written backward (a gather) passes gradcheck."""
    flow = _random_flow(5, steps=3, seed=2)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    z, logdet = flow(x)
    with torch.no_grad():
        z0, logdet0 = flow(x)
    assert torch.equal(z, z0) and torch.equal(logdet, logdet0)
    assert torch.autograd.gradcheck(lambda v: flow(v)[0], (x,))
    from flawmap.components.flows import _PlaceChannels

    y_a = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    y_b = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([4, 0, 2, 1, 3])
    out = _PlaceChannels.apply(y_a, y_b, pos[:2], pos[2:])
    assert torch.equal(out, torch.cat([y_a, y_b], 1)[:, torch.argsort(pos)])
    assert torch.autograd.gradcheck(lambda a, b: _PlaceChannels.apply(a, b, pos[:2], pos[2:]), (y_a, y_b))


def test_channels_last_input_gives_the_same_flow():
    flow = _random_flow(6, steps=2, seed=3).float()
    x = torch.randn(2, 6, 5, 5)
    z, logdet = flow(x)
    zc, logdetc = flow.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(z, zc, atol=1e-5) and torch.allclose(logdet, logdetc, rtol=1e-5)


def test_autocast_runs_only_the_subnets_in_low_precision():
    """Under bfloat16 autocast the coupling, z and the log-det stay float32 (the NLL needs them)."""
    flow = _random_flow(6, steps=2, seed=4).float()
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = flow(x)
        nll = gaussian_nll(z, logdet)
    assert z.dtype == logdet.dtype == nll.dtype == torch.float32
    nll.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    z32, logdet32 = flow(x)
    assert torch.allclose(z, z32, rtol=0.05, atol=0.05)  # bf16 subnets: close, not equal
    assert not torch.equal(z, z32)
