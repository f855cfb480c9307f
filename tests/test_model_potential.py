"""The vectorised Pyro-model potential against Pyro's own per-particle log densities, and the
Pyro-trace helpers it shares with importance_sample (pyro_snf.infer.tracing)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.mcmc.util import initialize_model
from torch.distributions import biject_to

from pyro_snf.infer import potential, tracing
from pyro_snf.infer.potential import (
    ModelPotential,
    check_model_trace,
    trace_model,
)
from pyro_snf.infer.tracing import check_no_subsampling, max_plate_nesting, per_particle_sum


def constrained_model(y):
    """Positive, interval, simplex, corr-Cholesky, vector and plated latents."""
    dtype, device = y.dtype, y.device
    one = torch.ones((), dtype=dtype, device=device)
    sigma = pyro.sample("sigma", dist.HalfNormal(one))
    rho = pyro.sample("rho", dist.Uniform(-one, 2 * one))
    p = pyro.sample("p", dist.Dirichlet(torch.ones(3, dtype=dtype, device=device)))
    L = pyro.sample("L", dist.LKJCholesky(3, 2 * one))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=dtype, device=device), one).to_event(1))
    with pyro.plate("groups", 4):
        mu = pyro.sample("mu", dist.Normal(rho, sigma))
    pyro.factor("prior_tweak", -0.1 * b.pow(2).sum(-1))
    loc = mu.sum(-1, keepdim=True) * p[..., 0] + L[..., 1, 0] + b[..., 0]
    with pyro.plate("data", y.shape[-1]), poutine.scale(scale=0.5):
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def nested_model(y):
    """Two nested plates and a latent inside both."""
    tau = pyro.sample("tau", dist.LogNormal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("rows", y.shape[0], dim=-2):
        a = pyro.sample("a", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
        with pyro.plate("cols", y.shape[1], dim=-1):
            z = pyro.sample("z", dist.Normal(a, tau))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y)


def loop_potential(model, args, sites, x):
    """Per-particle reference: Pyro's trace log_prob_sum plus biject_to log-dets."""
    values, ladj, pos = {}, 0.0, 0
    for site in sites:
        u = x[pos:pos + site.size].reshape(site.unconstrained_shape)
        pos += site.size
        t = biject_to(site.support)
        values[site.name] = t(u)
        ladj = ladj + t.log_abs_det_jacobian(u, values[site.name]).sum()
    trace = poutine.trace(poutine.condition(model, values)).get_trace(*args)
    return -(trace.log_prob_sum() + ladj)


@pytest.mark.parametrize("model, shape", [(constrained_model, (6,)), (nested_model, (3, 4))])
def test_matches_per_particle_loop(model, shape, device, dtype):
    y = torch.randn(shape, dtype=dtype, device=device)
    u = ModelPotential.from_model(model, y)
    x = torch.randn(7, u.dim, dtype=dtype, device=device, requires_grad=True)
    values = u(x)
    (grad,) = torch.autograd.grad(values.sum(), x)
    ref, ref_grad = [], []
    for i in range(7):
        xi = x[i].detach().requires_grad_(True)
        ui = loop_potential(model, (y,), u.sites, xi)
        ref.append(ui.detach())
        ref_grad.append(torch.autograd.grad(ui, xi)[0])
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-9)
    assert values.dtype == dtype and values.shape == (7,)
    torch.testing.assert_close(values.detach(), torch.stack(ref), **tol)
    torch.testing.assert_close(grad, torch.stack(ref_grad), **tol)


def test_matches_initialize_model_potential_fn():
    y = torch.randn(5, 3, dtype=torch.float64)
    u = ModelPotential.from_model(nested_model, y)
    _, potential_fn, _, _ = initialize_model(nested_model, model_args=(y,))
    x = torch.randn(4, u.dim, dtype=torch.float64)
    flat = [u.unpack(xi.unsqueeze(0)) for xi in x]
    ref = torch.stack([potential_fn({k: v.reshape(s.unconstrained_shape) for (k, v), s in
                                     zip(f.items(), u.sites)}) for f in flat])
    torch.testing.assert_close(u(x), ref)


def test_layout_and_shapes():
    y = torch.randn(6)
    u = ModelPotential.from_model(constrained_model, y)
    assert [s.name for s in u.sites] == ["sigma", "rho", "p", "L", "b", "mu"]
    assert u.dim == 1 + 1 + 2 + 3 + 2 + 4 and u.max_plate_nesting == 1
    x = torch.randn(2, 3, u.dim)
    assert u(x).shape == (2, 3) and u(x[0, 0]).shape == ()
    torch.testing.assert_close(u(x)[1, 2], u(x[1, 2]))
    values, ladj = u.constrain(x.reshape(-1, u.dim))
    assert values["L"].shape == (6, 1, 3, 3) and values["mu"].shape == (6, 4) and ladj.shape == (6,)
    torch.testing.assert_close(u.log_joint(x) + u.log_abs_det_constrain(x), -u(x))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 13\)"):
        u(torch.zeros(3, 5))


def test_inside_outer_plate_and_hidden_from_outer_trace():
    """As when a guide runs inside Trace_ELBO's vectorised-particle plate (dim -2 here)."""
    y = torch.randn(6)
    u = ModelPotential.from_model(constrained_model, y)
    x = torch.randn(5, 1, u.dim)
    expected = u(x)
    with poutine.trace() as tracer, pyro.plate("num_particles_vectorized", 5, dim=-2):
        inside = u(x)
    torch.testing.assert_close(inside, expected)
    seen = [n for n, s in tracer.trace.nodes.items() if s["type"] in ("sample", "param")]
    assert seen == ["num_particles_vectorized"]  # only the outer plate's own subsample site


def test_no_grad_and_finite_gradients_at_bad_particles():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("f", torch.where(x > 1.0, torch.full_like(x, float("nan")), -x.pow(4)))

    u = ModelPotential.from_model(model)
    x = torch.tensor([[0.5], [2.0], [-0.3]], requires_grad=True)
    with torch.no_grad():
        assert torch.isinf(u(x)[1]) and torch.isfinite(u(x)[[0, 2]]).all()
    (g,) = torch.autograd.grad(u(x).sum(), x)
    assert torch.isfinite(g).all() and g[1, 0] == 0.0
    torch.testing.assert_close(g[0, 0], torch.tensor(0.5 + 4 * 0.5 ** 3))


def test_invalid_parameters_give_infinite_energy_not_an_exception():
    def model():
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(0.0, s.exp() - 1.0), obs=torch.tensor(0.3))  # scale <= 0 for s <= 0

    u = ModelPotential.from_model(model)  # the prior draw itself may be invalid: no error either
    out = u(torch.tensor([[-1.0], [1.0]]))
    assert out[0] == math.inf and torch.isfinite(out[1])


def test_unvectorisable_model_is_reported():
    x_data = torch.randn(10, 3)

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", 10):  # wrong: unsqueeze(-2) puts a batch dim left of the plates
            pyro.sample("y", dist.Normal((x_data * w.unsqueeze(-2)).sum(-1), 1.0), obs=torch.zeros(10))

    u = ModelPotential.from_model(model)
    with pytest.raises(ValueError, match="site 'y'.*does not broadcast"):
        u(torch.zeros(4, 3))


def test_dynamic_latent_site_is_reported():
    def model(extra=False):
        pyro.sample("a", dist.Normal(0.0, 1.0))
        if extra:
            pyro.sample("b", dist.Normal(0.0, 1.0))

    u = ModelPotential.from_model(model)
    u.kwargs = {"extra": True}
    with pytest.raises(RuntimeError, match="latent site 'b'.*dynamic"):
        u(torch.zeros(2, 1))


def test_model_errors():
    def discrete():
        pyro.sample("k", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    def subsampled():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.zeros(10))

    def nothing_latent():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(NotImplementedError, match="'k' is discrete.*enumeration"):
        ModelPotential.from_model(discrete)
    with pytest.raises(NotImplementedError, match="subsampled plate 'data'"):
        ModelPotential.from_model(subsampled)
    with pytest.raises(ValueError, match="no latent sample sites"):
        check_model_trace(trace_model(nothing_latent))


# -- the shared trace helpers: one implementation, each caller's rule ----------------------------
def test_potential_still_exports_the_moved_helpers():
    for name in ("trace_model", "max_plate_nesting", "particle_dim"):
        assert getattr(potential, name) is getattr(tracing, name)


def test_max_plate_nesting_rules():
    def model():
        pyro.sample("a", dist.Normal(torch.zeros(2, 1, 1), 1.0))  # batch rank 3, no plate
        with pyro.plate("data", 4):
            pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 3):  # only a plate in it
            pass

    tr = trace_model(model)
    assert max_plate_nesting(tr) == 3  # ModelPotential / AutoSNF: batch ranks count
    assert max_plate_nesting(tr, batch_ranks=False) == 1
    assert max_plate_nesting(tr, batch_ranks=False, plate_sites=True) == 2  # importance_sample


def test_per_particle_sum():
    t = torch.arange(24.0).reshape(2, 4, 3)  # dims: left, particles (-2), plate
    torch.testing.assert_close(per_particle_sum(t[0], 4, -2), t[0].sum(-1))
    torch.testing.assert_close(per_particle_sum(t, 4, -2, sum_left=True), t.sum((0, 2)))
    torch.testing.assert_close(per_particle_sum(t[:, :1], 4, -2, sum_left=True), t[:, 0].sum().expand(4))
    torch.testing.assert_close(per_particle_sum(torch.tensor(2.0), 4, -3), torch.full((4,), 2.0))
    torch.testing.assert_close(per_particle_sum(t[0, :, 0], 4, -1), t[0, :, 0])
    assert per_particle_sum(torch.zeros(4, 0), 4, -2).shape == (4,)  # an empty plate adds nothing
    with pytest.raises(ValueError, match="site 'x' has log_prob of shape.*does not broadcast"):
        per_particle_sum(t, 4, -2, "x")
    with pytest.raises(ValueError, match="site 'x': its log-density has 3 entries along the particle dim -1"):
        per_particle_sum(torch.zeros(3), 4, -1, "x")


def test_subsampling_rules():
    """importance_sample refuses any subsampled plate (its own subsample site), as a ValueError;
    ModelPotential refuses sites inside one, as a NotImplementedError naming the site."""
    def empty_plate():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.plate("data", 100, subsample_size=10)

    def site_inside():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.zeros(10))

    def sequential():  # a sequential plate that also subsamples: the first frame check reports it
        pyro.sample("x", dist.Normal(0.0, 1.0))
        for i in pyro.plate("data", 100, subsample_size=2):
            pyro.sample(f"y_{i}", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(ValueError, match="plate 'data' in the model subsamples 10 of 100 elements"):
        check_no_subsampling(trace_model(empty_plate), "model")
    check_model_trace(trace_model(empty_plate))  # nothing inside the plate is scaled
    with pytest.raises(ValueError, match="plate 'data' in the guide subsamples 10 of 100"):
        check_no_subsampling(trace_model(site_inside), "guide")
    with pytest.raises(NotImplementedError, match=r"site 'y' is in the subsampled plate 'data' \(size 10 of"):
        check_model_trace(trace_model(site_inside), who="AutoSNF")
    with pytest.raises(NotImplementedError, match="site 'y_[0-9]+' is in a sequential plate 'data'; AutoSNF"):
        check_model_trace(trace_model(sequential), who="AutoSNF")
    check_no_subsampling(trace_model(nested_model, (torch.zeros(2, 3),)), "model")
