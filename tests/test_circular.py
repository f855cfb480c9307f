"""Flows on R^a x T^b: CircularCoupling and TorusNormal, exact on the circle (round trip, log-det,
periodicity, normalisation by quadrature) and inside an SNF (log Z of a von Mises x normal target)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_snf import MetropolisBlock, StochasticNormalizingFlow
from pyro_snf.transforms.circular import CircularCoupling, circle_spline, circular_stage, wrap
from pyro_snf.transforms.torus_base import TorusNormal

PERIODIC = torch.tensor([False, True, True, False, True, False, True])


def _randomised(layers, std: float = 0.5, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    for layer in layers:
        for p in layer.net[-1].parameters():
            p.data = torch.randn(p.shape, generator=gen) * std
        layer.to(device, dtype)
    return layers


def _push(layers, x):
    log_det = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for layer in layers:
        y = layer(x)
        log_det = log_det + layer.log_abs_det_jacobian(x, y)
        x = y
    return x, log_det


def test_identity_at_initialisation(dtype, device):
    layers = [layer.to(device, dtype) for layer in circular_stage(PERIODIC, 2, hidden_dims=(8,))]
    x = TorusNormal(PERIODIC.to(device), dtype=dtype).rsample((50,))
    y, log_det = _push(layers, x)
    assert y.dtype == dtype and y.device.type == device.type
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(y, x, atol=tol) and log_det.abs().max() < tol


def test_round_trip_log_det_and_box(device):
    layers = _randomised(circular_stage(PERIODIC, 2, hidden_dims=(16,), count_bins=6), device=device)
    x = TorusNormal(PERIODIC.to(device), dtype=torch.float64).rsample((500,))
    y, log_det = _push(layers, x.clone())
    assert (y[:, PERIODIC].abs() <= math.pi).all()
    back = y.clone()
    for layer in reversed(layers):
        back = layer.inv(back.clone())  # clones: no cache hit, the inverse is really computed
    diff = back - x
    diff[:, PERIODIC] = wrap(diff[:, PERIODIC])
    assert diff.abs().max() < 1e-7
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: _push(layers, v)[0], x[i].clone())
        assert torch.allclose(torch.linalg.slogdet(jac)[1], log_det[i], atol=1e-9)


def test_circle_spline_exact_at_knots_and_ends(dtype):
    """Inverse of forward at every knot, both ends and random points; log g' against autograd."""
    gen = torch.Generator().manual_seed(3)
    k = 6
    widths = torch.softmax(torch.randn(4, k, generator=gen), -1).to(dtype)
    heights = torch.softmax(torch.randn(4, k, generator=gen), -1).to(dtype)
    slopes = torch.rand(4, k, generator=gen).to(dtype) * 2 + 0.1
    derivatives = torch.cat([slopes, slopes[:, :1]], -1)
    knots = (2 * torch.cumsum(widths, -1) - 1) * math.pi
    a = torch.cat([knots, torch.full((4, 1), -math.pi, dtype=dtype),
                   (torch.rand(4, 20, generator=gen).to(dtype) * 2 - 1) * math.pi], -1)
    args = tuple(t.unsqueeze(1).expand(4, a.shape[1], t.shape[-1]) for t in (widths, heights, derivatives))
    a = a.requires_grad_(True)
    y, log_g = circle_spline(a, *args)
    assert torch.isfinite(y).all() and (y.abs() <= math.pi + 1e-6).all()
    grad = torch.autograd.grad(y.sum(), a)[0]
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(torch.log(grad), log_g, atol=10 * tol)
    back, log_g_inv = circle_spline(y.detach(), *args, inverse=True)
    assert torch.allclose(back, a.detach(), atol=10 * tol)
    assert torch.allclose(log_g_inv, -log_g, atol=10 * tol)
    assert torch.allclose(y[:, k - 1], torch.full((4,), math.pi, dtype=dtype))  # ends fixed


def test_periodic_in_every_angle():
    layers = _randomised(circular_stage(PERIODIC, 2, hidden_dims=(16,)))
    x = TorusNormal(PERIODIC, dtype=torch.float64).rsample((200,))
    y, log_det = _push(layers, x.clone())
    for j in torch.nonzero(PERIODIC).reshape(-1):
        for turn in (-2 * math.pi, 2 * math.pi):
            shifted = x.clone()
            shifted[:, j] += turn
            y2, log_det2 = _push(layers, shifted)
            diff = y2 - y
            diff[:, PERIODIC] = wrap(diff[:, PERIODIC])
            assert diff.abs().max() < 1e-9 and (log_det2 - log_det).abs().max() < 1e-9


def test_pushforward_normalised_on_the_cylinder():
    """q(y) = q0(f^-1(y)) |det J_f^-1(y)| integrates to 1 over R x [-pi, pi] (grid quadrature)."""
    periodic = torch.tensor([False, True])
    layers = _randomised([CircularCoupling(periodic, [1], (16,), 6), CircularCoupling(periodic, [0], (16,)),
                          CircularCoupling(periodic, [1], (16,), 5)], std=0.1)
    n = 1200
    xs = torch.linspace(-12, 12, n, dtype=torch.float64)
    ts = torch.linspace(-math.pi, math.pi, n + 1, dtype=torch.float64)[:-1] + math.pi / n
    y = torch.cartesian_prod(xs, ts)
    log_det_inv = torch.zeros(len(y), dtype=torch.float64)
    with torch.no_grad():
        for layer in reversed(layers):
            x = layer.inv(y)
            log_det_inv = log_det_inv - layer.log_abs_det_jacobian(x, y)
            y = x
        q = torch.exp(TorusNormal(periodic, dtype=torch.float64).log_prob(y) + log_det_inv)
    integral = float(q.sum() * (xs[1] - xs[0]) * (2 * math.pi / n))
    assert abs(integral - 1.0) < 2e-3


def test_torus_normal(dtype):
    base = TorusNormal(PERIODIC, dtype=dtype)
    x = base.rsample((20000,))
    assert x.dtype == dtype and (x[:, PERIODIC].abs() <= math.pi).all()
    assert x[:, ~PERIODIC].mean(0).abs().max() < 0.05 and (x[:, ~PERIODIC].var(0) - 1).abs().max() < 0.05
    assert (x[:, PERIODIC].var(0) - math.pi ** 2 / 3).abs().max() < 0.1
    expected = (-0.5 * x[:, ~PERIODIC].square().sum(-1) - 3 * 0.5 * math.log(2 * math.pi)
                - 4 * math.log(2 * math.pi))
    assert torch.allclose(base.log_prob(x), expected, atol=1e-4)
    outside = x[:3].clone()
    outside[:, 1] = 3.5
    assert torch.isneginf(base.log_prob(outside)).all()


def _von_mises_normal(sigma: float = 0.5, kappa: float = 2.0, mu: float = 2.5):
    """u(x, t) = x^2 / (2 sigma^2) - kappa cos(t - mu) on R x [-pi, pi]; mass across t = pi."""

    def energy(z):
        u = 0.5 * (z[..., 0] / sigma) ** 2 - kappa * torch.cos(z[..., 1] - mu)
        return torch.where(z[..., 1].abs() <= math.pi, u, torch.full_like(u, math.inf))

    log_z = math.log(math.sqrt(2 * math.pi) * sigma) + math.log(2 * math.pi * float(torch.special.i0(
        torch.tensor(kappa, dtype=torch.float64))))
    return energy, log_z


def test_snf_with_circular_flows_is_exact(dtype, device):
    """log Z of a boxed target from a circular SNF (random flows, Metropolis blocks) within 4 SE."""
    periodic = torch.tensor([False, True], device=device)
    energy, log_z = _von_mises_normal()
    layers = []
    for i, beta in enumerate((0.5, 1.0)):
        layers += _randomised(circular_stage(periodic.cpu(), 2, hidden_dims=(8,), stage=i), std=0.2,
                              dtype=dtype, device=device)
        layers.append(MetropolisBlock(step_size=0.8, num_steps=5, beta=beta, adapt_step_size=False))
    snf = StochasticNormalizingFlow(TorusNormal(periodic, dtype=dtype), layers, energy)
    with torch.no_grad():
        x, log_w = snf.sample_and_log_weight((20000,))
    assert torch.isfinite(log_w).all() and (x[:, 1].abs() <= math.pi).all()
    log_w = log_w.double()
    w = torch.exp(log_w - log_w.max())
    estimate = float(torch.log(w.mean()) + log_w.max())
    se = float(w.std() / w.mean()) / math.sqrt(len(w))
    assert abs(estimate - log_z) < 4 * se + 1e-3, (estimate, log_z, se)


def test_saved_stage_gives_the_same_numbers(tmp_path):
    layers = _randomised(circular_stage(PERIODIC, 2, hidden_dims=(8,), stage=3))
    torch.save([layer.state_dict() for layer in layers], tmp_path / "stage.pt")
    rebuilt = [layer.double() for layer in circular_stage(PERIODIC, 2, hidden_dims=(8,), stage=3)]
    for layer, state in zip(rebuilt, torch.load(tmp_path / "stage.pt")):
        layer.load_state_dict(state)
    x = TorusNormal(PERIODIC, dtype=torch.float64).rsample((10,))
    assert torch.equal(_push(layers, x.clone())[0], _push(rebuilt, x.clone())[0])
    # the split is part of the state: a layer built with another split loads the saved one with it
    other = circular_stage(PERIODIC, 2, hidden_dims=(8,), stage=4)[0].double()
    assert not torch.equal(other.transformed, layers[0].transformed)
    other.load_state_dict(layers[0].state_dict())
    assert torch.equal(other(x.clone()), layers[0](x.clone()))
    with pytest.raises(RuntimeError, match="size mismatch"):  # other widths: refused, never reset
        circular_stage(PERIODIC, 2, hidden_dims=(9,), stage=3)[0].load_state_dict(layers[0].state_dict())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="conditioning part"):
        CircularCoupling(PERIODIC, torch.ones(7, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        CircularCoupling(PERIODIC, torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean mask"):
        CircularCoupling([1, 2], [0])
    with pytest.raises(ValueError, match="boolean mask"):
        TorusNormal(torch.tensor([1, 2]))
