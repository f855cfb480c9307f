"""StochasticNormalizingFlow as a Pyro distribution: log_prob, backward_path, expand, plates, ELBO."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.distributions.transforms import AffineTransform

from pyro_snf import (
    BlockInfo,
    HMCBlock,
    ImportanceWeights,
    LangevinBlock,
    MetropolisBlock,
    StochasticNormalizingFlow,
)
from pyro_snf.architectures import snf_layers
from pyro_snf.path import backward_path, forward_path
from pyro_snf.transforms import real_nvp_stage, spline_coupling_stage

D = 3
MEAN = torch.tensor([1.0, -0.5, 0.3])
STD = torch.tensor([0.6, 1.3, 0.9])


def gauss(x):
    return 0.5 * ((x - MEAN.to(x)) / STD.to(x)).pow(2).sum(-1)


def base_normal(dtype=torch.float32, scale=1.5, dim=D):
    return dist.Normal(torch.zeros(dim, dtype=dtype), torch.full((dim,), scale, dtype=dtype)).to_event(1)


def bijections(kind: str, dtype: torch.dtype) -> list:
    if kind == "affine_vector":
        layers = [AffineTransform(torch.tensor([0.3, -0.2, 0.1]), torch.tensor([1.2, 0.7, 1.5]), event_dim=1)]
    elif kind == "elementwise":  # event_dim 0 transforms: log-dets summed over the event
        layers = [AffineTransform(0.5, 2.0), T.Spline(D, count_bins=4), AffineTransform(-0.1, 0.8)]
    elif kind == "affine_coupling":
        layers = [T.affine_coupling(D, hidden_dims=[8]), T.Permute(torch.tensor([2, 0, 1])),
                  T.affine_coupling(D, hidden_dims=[8])]
    elif kind == "real_nvp":
        layers = real_nvp_stage(D, num_couplings=2, hidden_dims=(8, 8))
    elif kind == "spline_coupling":
        layers = spline_coupling_stage(D, num_couplings=1, hidden_dims=(8,), count_bins=4)
    else:
        raise AssertionError(kind)
    out = []
    for layer in layers:
        if isinstance(layer, torch.nn.Module):
            layer = layer.to(dtype)
        elif isinstance(layer, AffineTransform):
            loc, scale = layer.loc, layer.scale
            if isinstance(loc, torch.Tensor):
                layer = AffineTransform(loc.to(dtype), scale.to(dtype), event_dim=layer.event_dim)
        out.append(layer)
    return out


def tols(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}


BIJECTIONS = ["affine_vector", "elementwise", "affine_coupling", "real_nvp", "spline_coupling"]


# -- bijection-only flows -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BIJECTIONS)
def test_bijection_flow_log_prob_matches_transformed_distribution(kind, dtype):
    base = base_normal(dtype)
    layers = bijections(kind, dtype)
    snf = StochasticNormalizingFlow(base, layers)
    td = dist.TransformedDistribution(base, layers)
    foreign = 1.3 * torch.randn(200, D, dtype=dtype)
    with torch.no_grad():
        lp = snf.log_prob(foreign)
        assert lp.dtype == dtype and lp.shape == (200,)
        assert torch.allclose(lp, td.log_prob(foreign.clone()), **tols(dtype))
        own = snf.rsample((200,))
        assert own.dtype == dtype
        lp_own = snf.log_prob(own)
        assert torch.allclose(lp_own, td.log_prob(own.clone()), **tols(dtype))
        # the recorded path density equals the inverse-path density of the same values
        assert torch.allclose(lp_own, snf.log_prob(own.clone()), **tols(dtype))


@pytest.mark.parametrize("kind", BIJECTIONS)
def test_bijection_flow_backward_path_is_exact_nll(kind, dtype):
    base = base_normal(dtype)
    layers = bijections(kind, dtype)
    snf = StochasticNormalizingFlow(base, layers)
    x = 1.3 * torch.randn(200, D, dtype=dtype)
    with torch.no_grad():
        z, nll = snf.backward_path(x)
        assert torch.allclose(nll, -snf.log_prob(x.clone()), **tols(dtype))
        y = z
        for layer in layers:
            y = layer(y)
    assert torch.allclose(y, x, **tols(dtype))


def test_flow_scale_conjugates_each_flow_block(dtype):
    """``flow_scale=s`` with base N(0, s^2) is the unit-scale flow followed by ``x -> s x``."""
    layers = snf_layers(D, num_stages=1, block=None, flow_scale=5.0, hidden_dims=(8,))
    layers = [layer.to(dtype) if isinstance(layer, torch.nn.Module) else layer for layer in layers]
    assert isinstance(layers[0], AffineTransform) and isinstance(layers[-1], AffineTransform)
    scaled = StochasticNormalizingFlow(base_normal(dtype, scale=5.0), layers)
    reference = StochasticNormalizingFlow(base_normal(dtype, scale=1.0),
                                          layers[1:-1] + [AffineTransform(0.0, 5.0, event_dim=1)])
    x = 5.0 * torch.randn(64, D, dtype=dtype)
    assert torch.allclose(scaled.log_prob(x), reference.log_prob(x), **tols(dtype))
    # blocks stay outside the rescaled flow blocks, in the target's coordinates
    with_blocks = snf_layers(D, num_stages=2, block="metropolis", flow_scale=5.0, hidden_dims=(8,))
    names = [type(layer).__name__ for layer in with_blocks]
    assert names[0] == "MetropolisBlock" and names[1] == "AffineTransform"
    assert names[names.index("MetropolisBlock", 1) - 1] == "AffineTransform"


def test_bijection_flow_log_prob_integrates_to_one():
    """Quadrature on a 2-D grid: the density of a coupling flow is normalised."""
    base = base_normal(torch.float64, scale=1.0, dim=2)
    layers = [T.affine_coupling(2, hidden_dims=[8]).double(), T.Permute(torch.tensor([1, 0])),
              AffineTransform(torch.tensor([0.5, -0.5], dtype=torch.float64),
                              torch.tensor([0.8, 1.2], dtype=torch.float64), event_dim=1)]
    snf = StochasticNormalizingFlow(base, layers)
    g = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    xx = torch.cartesian_prod(g, g)
    with torch.no_grad():
        mass = snf.log_prob(xx).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(mass) - 1.0) < 1e-3


# -- path log-density of SNFs with blocks -------------------------------------------------------


AFFINE_LOC = torch.tensor([0.2, -0.1, 0.0])
AFFINE_SCALE = torch.tensor([1.1, 0.9, 1.3])


def affine_metropolis_snf(beta: float = 0.5):
    """``[A, Metropolis(beta)]``: its path density is ``log q0(z) - log|det A| - (u_b(x) - u_b(Az))``."""
    base = base_normal()
    layers = [AffineTransform(AFFINE_LOC, AFFINE_SCALE, event_dim=1), MetropolisBlock(0.6, 3, beta=beta)]
    return StochasticNormalizingFlow(base, layers, gauss), base


def expected_path_log_prob(base, z, x, beta):
    def u_b(y):
        return (1 - beta) * (-base.log_prob(y)) + beta * gauss(y)

    y1 = AFFINE_LOC + AFFINE_SCALE * z
    return base.log_prob(z) - AFFINE_SCALE.log().sum() - (u_b(x) - u_b(y1))


@pytest.mark.parametrize("sample_shape", [(), (5,), (3, 4)])
def test_log_prob_of_own_samples_is_path_density(sample_shape):
    snf, base = affine_metropolis_snf()
    pyro.set_rng_seed(11)
    x = snf.rsample(sample_shape)
    pyro.set_rng_seed(11)
    z = base.rsample(sample_shape)  # the first draw of rsample is the base draw
    assert x.shape == torch.Size(sample_shape) + (D,)
    lp = snf.log_prob(x)
    assert lp.shape == torch.Size(sample_shape)
    assert torch.allclose(lp, expected_path_log_prob(base, z, x, 0.5), atol=1e-5)
    assert 0.0 < float(snf.info[0].acceptance_rate) < 1.0


def test_log_prob_survives_expand():
    snf, base = affine_metropolis_snf()
    expanded = snf.expand((5,))
    assert expanded.batch_shape == (5,) and expanded.event_shape == (D,)
    pyro.set_rng_seed(3)
    x = expanded.rsample((2,))
    pyro.set_rng_seed(3)
    z = base.expand((5,)).rsample((2,))
    assert x.shape == (2, 5, D)
    expected = expected_path_log_prob(base, z, x, 0.5)
    assert torch.allclose(expanded.log_prob(x), expected, atol=1e-5)
    assert torch.allclose(snf.log_prob(x), expected, atol=1e-5)  # same flow, same record
    assert torch.allclose(expanded.expand((2, 5)).log_prob(x), expected, atol=1e-5)


def test_log_prob_inside_vectorised_particle_plates():
    """``pyro.sample`` of an SNF in nested plates: the trace's site distribution scores its value
    with the path log-density (Pyro expands the distribution to the plates' batch shape)."""
    snf, base = affine_metropolis_snf()
    num_particles, num_data = 6, 4

    def guide():
        with pyro.plate("particles", num_particles, dim=-2), pyro.plate("data", num_data, dim=-1):
            return pyro.sample("x", snf)

    pyro.set_rng_seed(5)
    trace = poutine.trace(guide).get_trace()
    pyro.set_rng_seed(5)
    z = base.rsample((num_particles, num_data))
    site = trace.nodes["x"]
    x = site["value"]
    assert x.shape == (num_particles, num_data, D)
    expected = expected_path_log_prob(base, z, x, 0.5)
    assert torch.allclose(site["fn"].log_prob(x), expected, atol=1e-5)
    trace.compute_log_prob()
    assert torch.allclose(site["log_prob"], expected, atol=1e-5)
    assert torch.allclose(trace.log_prob_sum(), expected.sum(), atol=1e-3)


def test_trace_elbo_with_vectorised_particles_uses_path_density():
    """Trace_ELBO(vectorize_particles=True) wraps the guide in a particle plate (expand); its loss
    equals the mean of ``log q_path(x) - log p(x)`` computed by hand from the same draws."""
    snf, base = affine_metropolis_snf()
    num_particles = 2000
    model_dist = dist.Normal(MEAN, STD).to_event(1)

    def model():
        pyro.sample("x", model_dist)

    def guide():
        pyro.sample("x", snf)

    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=0)
    pyro.set_rng_seed(7)
    loss = elbo.loss(model, guide)
    pyro.set_rng_seed(7)
    x = snf.rsample((num_particles,))
    manual = (snf.log_prob(x) - model_dist.log_prob(x)).mean()
    assert math.isclose(loss, float(manual), rel_tol=1e-5, abs_tol=1e-5)
    # and the ELBO is a lower bound on log Z = 0 of the normalised model density
    assert loss > 0


def test_log_prob_of_foreign_tensor_raises():
    snf, _ = affine_metropolis_snf()
    x = snf.rsample((10,))
    other, _ = affine_metropolis_snf()
    other_x = other.rsample((10,))
    for bad in (torch.randn(10, D), x.clone(), x.detach(), x[:5], other_x):
        with pytest.raises(ValueError, match="not produced by it"):
            snf.log_prob(bad)
    assert snf.log_prob(x).shape == (10,)


def test_sample_is_scorable_and_gradient_free():
    snf, base = affine_metropolis_snf()
    x = snf.sample((10,))
    assert not x.requires_grad
    assert torch.isfinite(snf.log_prob(x)).all()


# -- weights, info, parameters --------------------------------------------------------------------


def test_sample_and_log_weight():
    snf, _ = affine_metropolis_snf()
    x, log_w = snf.sample_and_log_weight((500,))
    assert x.shape == (500, D) and log_w.shape == (500,)
    assert not x.requires_grad and not log_w.requires_grad
    assert torch.allclose(log_w, -gauss(x) - snf.log_prob(x), atol=1e-6)
    assert torch.allclose(snf.log_weight(x), log_w)
    x2, iw = snf.importance_weights(300)
    assert isinstance(iw, ImportanceWeights) and iw.num_samples == 300 and x2.shape == (300, D)


def test_sample_trajectory_keeps_every_state_and_matches_sample_and_log_weight():
    snf, _ = affine_metropolis_snf()
    torch.manual_seed(3)
    x, log_w = snf.sample_and_log_weight((400,))
    torch.manual_seed(3)
    states, log_w_traj = snf.sample_trajectory((400,))
    assert len(states) == len(snf.layers) + 1 and all(s.shape == (400, D) for s in states)
    assert torch.equal(states[-1], x) and torch.equal(log_w_traj, log_w)
    assert not log_w_traj.requires_grad
    # a bijection's state is that layer applied to the previous one; a block's state is a new draw
    for t, layer in enumerate(snf.layers):
        if not isinstance(layer, MetropolisBlock):
            assert torch.allclose(states[t + 1], layer(states[t]), atol=1e-6)


def test_info_lists_block_statistics_in_layer_order(block_cases):
    blocks = [case.make(num_steps=2, beta=0.5) for case in block_cases.values()]  # every block type
    layers = [blocks[0], T.affine_coupling(D), *blocks[1:]]
    snf = StochasticNormalizingFlow(base_normal(), layers, gauss)
    assert snf.info == [None] * len(blocks) and snf.blocks == blocks
    snf.sample((100,))
    assert len(snf.info) == len(blocks) and all(isinstance(i, BlockInfo) for i in snf.info)
    assert all(info is block.last_info for info, block in zip(snf.info, blocks))  # layer order
    for info, block in zip(snf.info, blocks):
        if not block.metropolis_adjusted:
            assert float(info.acceptance_rate) == 1.0  # unadjusted dynamics accept everything
        assert int(info.num_dead) == 0 and int(info.num_nonfinite) == 0


def test_info_belongs_to_the_flow_that_drew():
    """Two flows sharing a block each report their own most recent run; expanded copies (Pyro
    plates) and ``backward_path`` update their flow's statistics."""
    shared = LangevinBlock(0.3, 4)
    mine = StochasticNormalizingFlow(base_normal(), [MetropolisBlock(0.5, 2), shared], gauss)
    other = StochasticNormalizingFlow(base_normal(), [shared], walled)
    mine.sample((500,))
    own = mine.info
    assert int(own[1].num_dead) == 0
    with pytest.warns(RuntimeWarning):
        other.sample_and_log_weight((500,))
    assert int(other.info[0].num_dead) > 0 and shared.last_info is other.info[0]
    assert mine.info[0] is own[0] and mine.info[1] is own[1]  # untouched by the other flow's draw
    mine.expand((5,)).rsample((2,))
    assert mine.info[1] is shared.last_info and mine.info[1] is not own[1]
    mine.backward_path(torch.randn(50, D))
    assert [i is b.last_info for i, b in zip(mine.info, mine.blocks)] == [True, True]
    assert other.info[0] is not shared.last_info


def test_paths_collect_block_infos_in_layer_order(block_cases):
    blocks = [case.make(beta=0.5) for case in block_cases.values()]
    layers = [T.affine_coupling(D), *blocks[:2], T.Permute(torch.tensor([2, 0, 1])), *blocks[2:]]
    base = base_normal()
    for run in ("forward", "backward"):
        infos, states = [], []
        if run == "forward":
            forward_path(layers, base.sample((64,)), gauss, lambda y: -base.log_prob(y), states, infos)
            assert len(states) == len(layers) + 1
        else:
            backward_path(layers, torch.randn(64, D), gauss, lambda y: -base.log_prob(y), infos)
        assert len(infos) == len(blocks) and all(i is b.last_info for i, b in zip(infos, blocks)), run


def test_parameters_are_those_of_the_layers():
    coupling = T.affine_coupling(D, hidden_dims=[8])
    block = MetropolisBlock(0.5, 2, beta=0.5, learn_step_size=True, learn_beta=True)
    fixed = LangevinBlock(0.05, 2)
    snf = StochasticNormalizingFlow(base_normal(), [coupling, block, fixed], gauss)
    params = {id(p) for p in snf.parameters()}
    expected = {id(p) for p in coupling.parameters()} | {id(block.log_step_size), id(block.beta_logit)}
    assert params == expected
    assert isinstance(snf.module, torch.nn.ModuleList) and len(snf.module) == 3


def test_float64_flow_samples_in_float64():
    layers = [AffineTransform(torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64) * 1.1,
                              event_dim=1), HMCBlock(0.2, 2, beta=0.5), T.affine_coupling(D).double()]
    snf = StochasticNormalizingFlow(base_normal(torch.float64), layers, gauss)
    x, log_w = snf.sample_and_log_weight((50,))
    assert x.dtype == torch.float64 and log_w.dtype == torch.float64
    z, nll = snf.backward_path(x)
    assert z.dtype == torch.float64 and nll.dtype == torch.float64


def walled(x):
    u = gauss(x)
    return torch.where(x[..., 0] > 1.5, torch.full_like(u, float("inf")), u)


def test_sample_and_log_weight_warns_with_count_of_dead_particles():
    snf = StochasticNormalizingFlow(base_normal(), [LangevinBlock(0.3, 4)], walled)
    with pytest.warns(RuntimeWarning) as record:
        x, log_w = snf.sample_and_log_weight((1000,))
    zero = int((log_w == -float("inf")).sum())
    assert zero > 0 and not torch.isnan(log_w).any()
    assert zero == int(snf.info[0].num_dead)
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert any(f"{zero} of 1000" in m for m in messages), messages
    iw = ImportanceWeights(log_w)
    assert iw.num_zero == zero and math.isfinite(float(iw.log_evidence))


def test_log_weight_without_warning():
    snf = StochasticNormalizingFlow(base_normal(), [LangevinBlock(0.3, 4)], walled)
    with torch.no_grad():
        x = snf.rsample((1000,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_w = snf.log_weight(x, warn=False)
    assert (log_w == -float("inf")).any() and not torch.isnan(log_w).any()


@pytest.mark.parametrize("make_base", [
    lambda dt: dist.Normal(torch.tensor([0.5, -1.0, 2.0], dtype=dt),
                           torch.tensor([0.3, 1.0, 2.5], dtype=dt)).to_event(1),
    lambda dt: dist.Normal(torch.zeros(3, dtype=dt), 2.0).to_event(1),  # scalar scale, broadcast
    lambda dt: dist.MultivariateNormal(torch.zeros(3, dtype=dt), 2.0 * torch.eye(3, dtype=dt)),  # generic
], ids=["diagonal", "broadcast", "mvn"])
def test_base_potential_is_minus_log_prob_and_inf_where_not_finite(make_base, dtype):
    """The closed form for diagonal Normal bases (blocks call it at every step) matches log_prob."""
    base = make_base(dtype)
    snf = StochasticNormalizingFlow(base, [MetropolisBlock(0.5, 1, beta=0.5)], lambda x: x.pow(2).sum(-1))
    y = torch.randn(7, 3, dtype=dtype) * 3
    torch.testing.assert_close(snf.base_potential(y), -base.log_prob(y))
    y[1, 0], y[4, 2] = float("nan"), float("inf")
    u = snf.base_potential(y)
    assert u.dtype == dtype and u[1] == float("inf") and u[4] == float("inf")
    assert torch.isfinite(u[[0, 2, 3]]).all()
