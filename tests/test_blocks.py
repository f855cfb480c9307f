"""Stochastic blocks on their own.

- exact path terms, recomputed independently of the engine (Metropolis-type: ``u_beta(y) - u_beta(x)``;
  overdamped Langevin: the noise ratio; small-step limits of the Langevin blocks);
- the backward kernel's sign convention;
- invariance of Metropolis / MALA / HMC kernels for the target and for the annealed density;
- dtype/device following, ``torch.no_grad()``, non-finite energies;
- the block registry (every class in ``pyro_snf.blocks.BLOCKS`` has a test case), ``step`` and its
  statistics, and ``PulledBackBlock``.

The block types come from the registry in ``conftest.py`` (fixtures ``block_case``,
``adjusted_block_case``, ``unadjusted_block_case``); tests that need other settings override them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import AffineTransform

from pyro_snf.blocks import (
    BLOCKS,
    BlockInfo,
    BlockStep,
    HMCBlock,
    LangevinBlock,
    MALABlock,
    MetropolisBlock,
    PulledBackBlock,
    block_factory,
    resolve_block,
)
from pyro_snf.targets import DoubleWell
from pyro_snf.targets.double_well import double_well_x1_energy

BETA_MODES = {
    "annealed": {"beta": 0.4},
    "target": {"beta": 1.0},
    "learnable": {"beta": 0.3, "learn_beta": True, "learn_step_size": True},
}


class DiagGaussian:
    """``u(x) = 0.5 |(x - mean) / std|^2`` (unnormalised) with exact samples and moments."""

    def __init__(self, mean, std) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        self.dim = self.mean.numel()
        self.log_Z = float(torch.log(self.std * math.sqrt(2 * math.pi)).sum())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.mean.to(x), self.std.to(x)
        return 0.5 * ((x - m) / s).pow(2).sum(-1)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """``-log N(x; mean, std^2)``."""
        return self(x) + self.log_Z

    def sample(self, n: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
        z = torch.randn(n, self.dim, dtype=torch.float64)
        return (self.mean + self.std * z).to(dtype=dtype, device=device)


def annealed_gaussian(base: DiagGaussian, target: DiagGaussian, beta: float) -> DiagGaussian:
    """``exp(-(1 - beta) u_0 - beta u)`` for two diagonal Gaussians is the Gaussian returned."""
    prec = (1 - beta) / base.std**2 + beta / target.std**2
    mean = ((1 - beta) * base.mean / base.std**2 + beta * target.mean / target.std**2) / prec
    return DiagGaussian(mean, prec.rsqrt())


TARGET = DiagGaussian([1.0, -0.5, 0.3], [0.6, 1.3, 0.9])
BASE = DiagGaussian([0.5, -1.0, 0.0], [2.0, 1.5, 1.0])


def u_beta(x: torch.Tensor, beta: float) -> torch.Tensor:
    return (1 - beta) * BASE.normalised(x) + beta * TARGET(x)


def grad_u_beta(x: torch.Tensor, beta: float) -> torch.Tensor:
    xg = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(u_beta(xg, beta).sum(), xg)
    return g


def beta_of(block) -> float:
    beta = block.beta
    return float(beta.detach()) if isinstance(beta, torch.Tensor) else float(beta)


def step_of(block, x: torch.Tensor) -> float:
    """The step size the block uses for ``x`` (stored in the parameter dtype, then cast)."""
    return float(block.step_size_like(x).detach())


def tol(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}


def assert_mean_var(sample: torch.Tensor, mean: float, var: float, k: float = 4.0) -> None:
    """Sample mean and variance within ``k`` standard errors (SEs from the sample itself)."""
    s = sample.detach().double()
    n = s.numel()
    m_hat, v_hat = float(s.mean()), float(s.var())
    se_mean = math.sqrt(v_hat / n)
    m4 = float((s - m_hat).pow(4).mean())
    se_var = math.sqrt(max(m4 - v_hat**2, 0.0) / n)
    assert abs(m_hat - mean) < k * se_mean, f"mean {m_hat:.5f} vs exact {mean:.5f} (SE {se_mean:.2g})"
    assert abs(v_hat - var) < k * se_var, f"variance {v_hat:.5f} vs exact {var:.5f} (SE {se_var:.2g})"


# -- exact path terms -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 4])
@pytest.mark.parametrize("mode", list(BETA_MODES))
def test_metropolis_type_path_term_is_energy_difference(adjusted_block_case, mode, num_steps, dtype):
    x = (1.5 * torch.randn(2000, 3)).to(dtype)
    block = adjusted_block_case.make(num_steps=num_steps, **BETA_MODES[mode])
    y, dS = block.forward_step(x, TARGET, BASE.normalised)
    beta = beta_of(block)
    assert torch.allclose(dS, u_beta(y, beta) - u_beta(x, beta), **tol(dtype))
    acc = float(block.last_info.acceptance_rate)
    assert 0.0 < acc < 1.0  # both accepted and rejected proposals were exercised
    rejected_throughout = (y == x).all(-1)
    if num_steps == 1:
        assert rejected_throughout.any() and (~rejected_throughout).any()
    assert torch.equal(dS[rejected_throughout], torch.zeros_like(dS[rejected_throughout]))


def langevin_noise_ratio(x: torch.Tensor, y: torch.Tensor, eps: float, beta: float):
    """``(xi, xi_back, dS)`` of one overdamped Langevin move ``x -> y`` (recomputed from scratch)."""
    scale = math.sqrt(2 * eps)
    xi = (y - x + eps * grad_u_beta(x, beta)) / scale
    xi_back = (x - y + eps * grad_u_beta(y, beta)) / scale
    return xi, xi_back, 0.5 * (xi.pow(2).sum(-1) - xi_back.pow(2).sum(-1))


@pytest.mark.parametrize("mode", list(BETA_MODES))
def test_langevin_path_term_is_noise_ratio(mode, dtype):
    n, eps = 4000, 0.08
    x = (1.5 * torch.randn(n, 3)).to(dtype)
    block = LangevinBlock(step_size=eps, num_steps=1, **BETA_MODES[mode])
    y, dS = block.forward_step(x, TARGET, BASE.normalised)
    xi, _, dS_ref = langevin_noise_ratio(x, y, step_of(block, x), beta_of(block))
    assert torch.allclose(dS, dS_ref, **tol(dtype))
    # The recovered forward noise must be standard normal: checks the proposal's sqrt(2 eps) scale.
    assert_mean_var(xi.flatten(), 0.0, 1.0)
    assert float(dS.detach().abs().mean()) > 1e-2  # the check is not vacuous


def test_langevin_steps_compose():
    """``num_steps = K`` is K single steps: same draws, path terms add up."""
    x = 1.5 * torch.randn(500, 3, dtype=torch.float64)
    torch.manual_seed(1)
    y, dS = LangevinBlock(0.05, num_steps=4, beta=0.5).forward_step(x, TARGET, BASE.normalised)
    torch.manual_seed(1)
    one = LangevinBlock(0.05, num_steps=1, beta=0.5)
    y_ref, dS_ref = x, torch.zeros(500, dtype=torch.float64)
    for _ in range(4):
        y_ref, d = one.forward_step(y_ref, TARGET, BASE.normalised)
        dS_ref = dS_ref + d
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    assert torch.allclose(dS, dS_ref, rtol=0, atol=1e-10)


def quartic(x: torch.Tensor) -> torch.Tensor:
    """A non-quadratic energy, so that energy conservation is not exact for any step."""
    return 0.25 * x.pow(4).sum(-1) + 0.5 * (x[..., 0] - x[..., 1]).pow(2)


SMALL_STEP_NUM_STEPS = {"underdamped": 20}  # default 1


def test_small_step_limit_of_unadjusted_path_terms(unadjusted_block_case):
    """As the step size shrinks, the Langevin path terms approach ``u(y) - u(x)``: the relative
    deviation decreases by a clear factor each time the step shrinks 10-fold."""
    case = unadjusted_block_case
    x = torch.randn(400, 2, dtype=torch.float64)
    rel = []
    for eps in (1e-2, 1e-3, 1e-4):
        torch.manual_seed(3)
        block = case.make(step_size=eps, num_steps=SMALL_STEP_NUM_STEPS.get(case.name, 1))
        with torch.no_grad():
            y, dS = block.forward_step(x, quartic)
            du = quartic(y) - quartic(x)
        rel.append(float((dS - du).abs().mean() / du.abs().mean()))
    assert rel[1] < rel[0] / 4 and rel[2] < rel[1] / 4, rel
    assert rel[2] < 0.05, rel


# -- backward kernels -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["annealed", "target"])
def test_metropolis_type_backward_step_sign(adjusted_block_case, mode):
    """For the pair (x, y) with x drawn backward from y: ``dS_pair = u_beta(y) - u_beta(x)``."""
    y = 1.5 * torch.randn(1000, 3, dtype=torch.float64)
    block = adjusted_block_case.make(**BETA_MODES[mode])
    x, dS = block.backward_step(y, TARGET, BASE.normalised)
    beta = BETA_MODES[mode]["beta"]
    assert torch.allclose(dS, u_beta(y, beta) - u_beta(x, beta), rtol=1e-10, atol=1e-10)
    assert not torch.equal(x, y)


@pytest.mark.parametrize("mode", ["annealed", "target"])
def test_langevin_backward_step_sign(mode):
    """The backward move draws x from y with the forward kernel; the pair's term is for x -> y."""
    eps = 0.08
    y = 1.5 * torch.randn(4000, 3, dtype=torch.float64)
    block = LangevinBlock(step_size=eps, num_steps=1, **BETA_MODES[mode])
    x, dS = block.backward_step(y, TARGET, BASE.normalised)
    _, xi_back, dS_ref = langevin_noise_ratio(x, y, step_of(block, y), beta_of(block))
    assert torch.allclose(dS, dS_ref, rtol=1e-10, atol=1e-10)
    assert_mean_var(xi_back.flatten(), 0.0, 1.0)  # the backward draw used the backward noise


# -- invariance ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def double_well_x1_tables():
    """Exact moments (quadrature) and a CDF table of the double well's x1 marginal."""
    f = lambda t: math.exp(-float(double_well_x1_energy(torch.tensor(t, dtype=torch.float64))))  # noqa: E731
    z = integrate.quad(f, -6, 6, epsabs=0, epsrel=1e-12, limit=200)[0]
    m1 = integrate.quad(lambda t: t * f(t), -6, 6, epsabs=0, epsrel=1e-12, limit=200)[0] / z
    m2 = integrate.quad(lambda t: t * t * f(t), -6, 6, epsabs=0, epsrel=1e-12, limit=200)[0] / z
    grid = np.linspace(-5.0, 5.0, 400_001)
    dens = np.exp(-double_well_x1_energy(torch.from_numpy(grid)).numpy())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    return m1, m2 - m1 * m1, grid, cdf / cdf[-1]


INVARIANCE_KWARGS = {  # steps large enough that a wrong kernel shows, acceptance well away from 0 and 1
    # (overrides of the registry's kwargs, by block name)
    "gauss": {
        "metropolis": {"step_size": 1.0, "num_steps": 5},
        "mala": {"step_size": 0.4, "num_steps": 5},
        "hmc": {"step_size": 0.8, "num_steps": 3, "num_leapfrog_steps": 4},
    },
    "double_well": {
        "metropolis": {"step_size": 0.6, "num_steps": 5},
        "mala": {"step_size": 0.04, "num_steps": 5},
        "hmc": {"step_size": 0.25, "num_steps": 3, "num_leapfrog_steps": 4},
    },
}


@pytest.mark.parametrize("target_name", ["gauss", "double_well"])
def test_metropolis_type_blocks_leave_target_invariant(adjusted_block_case, target_name):
    case = adjusted_block_case
    n = 20_000
    if target_name == "gauss":
        target = DiagGaussian([1.0, -0.5], [0.6, 1.3])
        x0 = target.sample(n)
        exact = [(float(target.mean[d]), float(target.std[d]) ** 2,
                  stats.norm(float(target.mean[d]), float(target.std[d])).cdf) for d in range(2)]
    else:
        target = DoubleWell()
        x0 = target.sample(n, dtype=torch.float64)
        m1, v1, grid, table = double_well_x1_tables()
        exact = [(m1, v1, lambda t: np.interp(t, grid, table)), (0.0, 1.0, stats.norm().cdf)]
    block = case.make(**INVARIANCE_KWARGS[target_name].get(case.name, {}))
    y = block.forward_step(x0, target)[0].detach()
    acc = float(block.last_info.acceptance_rate)
    assert 0.3 < acc < 0.97, acc
    assert float((y - x0).norm(dim=-1).mean()) > 0.2  # the chain moved: the test has power
    for d, (mean, var, cdf) in enumerate(exact):
        assert_mean_var(y[:, d], mean, var)
        p = stats.kstest(y[:, d].numpy(), cdf).pvalue
        assert p > 1e-3, f"KS test on coordinate {d}: p = {p:.2g}"


ANNEALED_INVARIANCE_KWARGS = {"metropolis": {"step_size": 1.2, "num_steps": 5},
                              "mala": {"step_size": 0.5, "num_steps": 5},
                              "hmc": {"step_size": 0.6, "num_steps": 3, "num_leapfrog_steps": 3}}


def test_metropolis_type_blocks_leave_annealed_density_invariant(adjusted_block_case):
    """With beta < 1 a block keeps ``exp(-u_beta)``, ``u_beta = (1 - beta) u_0 + beta u``, which for a
    Gaussian base and target is the Gaussian computed in closed form."""
    n, beta = 20_000, 0.4
    annealed = annealed_gaussian(BASE, TARGET, beta)
    # the annealed density is far from both end points at this sample size: a block that ignored
    # beta (or swapped beta and 1 - beta) would fail
    se = annealed.std / math.sqrt(n)
    assert float(((annealed.mean - TARGET.mean).abs() / se).max()) > 20
    assert float(((annealed.mean - BASE.mean).abs() / se).max()) > 20
    x0 = annealed.sample(n)
    kwargs = ANNEALED_INVARIANCE_KWARGS.get(adjusted_block_case.name, {})
    block = adjusted_block_case.make(beta=beta, **kwargs)
    y = block.forward_step(x0, TARGET, BASE.normalised)[0].detach()
    assert 0.3 < float(block.last_info.acceptance_rate) < 0.97
    for d in range(3):
        mean, std = float(annealed.mean[d]), float(annealed.std[d])
        assert_mean_var(y[:, d], mean, std**2)
        p = stats.kstest(y[:, d].numpy(), stats.norm(mean, std).cdf).pvalue
        assert p > 1e-3, f"KS test on coordinate {d}: p = {p:.2g}"


# -- dtype / device / no_grad ------------------------------------------------------------------------


def test_block_follows_input_dtype_and_device(block_case, dtype, device):
    other = torch.float64 if dtype == torch.float32 else torch.float32
    # learnable parameters stored in the *other* dtype: no promotion of the particles
    block = block_case.make(learn_step_size=True, learn_beta=True, beta=0.5).to(other)
    x = torch.randn(64, 3, dtype=dtype, device=device)
    runs = (block.forward_step(x, TARGET, BASE.normalised), block.backward_step(x, TARGET, BASE.normalised))
    for y, dS in runs:
        assert y.dtype == dtype and dS.dtype == dtype
        assert y.device == x.device and dS.device == x.device
        assert y.shape == x.shape and dS.shape == x.shape[:-1]
        assert torch.isfinite(y).all() and torch.isfinite(dS).all()
        info = block.last_info
        assert info.acceptance_rate.dtype == dtype
        for field in info:
            assert field.device == x.device and field.dim() == 0


@pytest.mark.parametrize("batch_shape", [(), (7,), (4, 5)])
def test_block_batch_shapes(block_case, batch_shape):
    x = torch.randn(*batch_shape, 3)
    y, dS = block_case.make().forward_step(x, TARGET)
    assert y.shape == x.shape and dS.shape == torch.Size(batch_shape)
    assert torch.isfinite(dS).all()


def test_sampling_under_no_grad(block_case):
    block = block_case.make(learn_step_size=True, learn_beta=True, beta=0.5)
    x = torch.randn(100, 3)
    with torch.no_grad():
        y, dS = block.forward_step(x, TARGET, BASE.normalised)
        xb, dSb = block.backward_step(x, TARGET, BASE.normalised)
    for t in (y, dS, xb, dSb):
        assert not t.requires_grad and torch.isfinite(t).all()
    assert not torch.equal(y, x)
    assert not x.requires_grad  # the caller's tensor is never mutated


def test_no_grad_sampling_uses_the_same_forces(block_case):
    """Under ``torch.no_grad()`` forces are still computed (grad enabled internally): at the same
    seed, the draw and its path term equal those of a run with gradients."""
    block = block_case.make(beta=0.5)
    x = torch.randn(200, 3, dtype=torch.float64)
    torch.manual_seed(8)
    y, dS = block.forward_step(x, TARGET, BASE.normalised)
    torch.manual_seed(8)
    with torch.no_grad():
        y_ng, dS_ng = block.forward_step(x, TARGET, BASE.normalised)
    assert torch.allclose(y.detach(), y_ng, rtol=0, atol=1e-12)
    assert torch.allclose(dS.detach(), dS_ng, rtol=0, atol=1e-10)


def test_block_does_not_mutate_caller_tensor(block_case):
    x = torch.randn(50, 3)
    x_copy = x.clone()
    y, dS = block_case.make(learn_step_size=True).forward_step(x, TARGET)
    assert not x.requires_grad and x.grad_fn is None and torch.equal(x, x_copy)
    assert y.requires_grad  # the learnable step size is in the graph


# -- non-finite energies ---------------------------------------------------------------------------


def walled(x: torch.Tensor) -> torch.Tensor:
    """A Gaussian energy that is +inf for x0 > 1 and NaN for x0 < -1.2."""
    u = 0.5 * x.pow(2).sum(-1)
    u = torch.where(x[..., 0] > 1.0, torch.full_like(u, float("inf")), u)
    return torch.where(x[..., 0] < -1.2, torch.full_like(u, float("nan")), u)


WALLED_STEP_SIZES = {"metropolis": 1.0, "mala": 0.3, "hmc": 0.4}  # proposals that hit the walls


def test_metropolis_type_blocks_reject_nonfinite_proposals(adjusted_block_case):
    x = 0.3 * torch.randn(2000, 2).clamp(-2, 2)
    case = adjusted_block_case
    block = case.make(step_size=WALLED_STEP_SIZES.get(case.name, case.kwargs["step_size"]))
    y, dS = block.forward_step(x, walled)
    info = block.last_info
    assert int(info.num_nonfinite) > 0 and int(info.num_dead) == 0
    assert torch.isfinite(dS).all() and torch.isfinite(walled(y)).all()
    assert ((y[:, 0] <= 1.0) & (y[:, 0] >= -1.2)).all()
    assert torch.allclose(dS, walled(y) - walled(x), atol=1e-5)


def test_metropolis_type_blocks_freeze_particles_entering_nonfinite(adjusted_block_case):
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-2.0, 0.0]])
    block = adjusted_block_case.make()
    y, dS = block.forward_step(x, walled)
    assert torch.equal(y[1:], x[1:])
    assert torch.isfinite(dS[0]) and (dS[1:] == -float("inf")).all()
    assert int(block.last_info.num_dead) == 2 and int(block.last_info.num_nonfinite) >= 2


def test_unadjusted_blocks_kill_particles_that_hit_nonfinite_energy(unadjusted_block_case):
    x = 0.3 * torch.randn(2000, 2).clamp(-2, 2)
    block = unadjusted_block_case.make(step_size=0.3, num_steps=5)
    y, dS = block.forward_step(x, walled)
    info = block.last_info
    dead = dS == -float("inf")
    assert int(info.num_dead) == int(dead.sum()) > 0
    assert int(info.num_nonfinite) >= int(info.num_dead)
    assert not torch.isnan(dS).any() and torch.isfinite(dS[~dead]).all()
    assert torch.isfinite(y).all()  # dead particles are frozen at their last finite state
    assert torch.isfinite(walled(y)).all()
    assert float(info.acceptance_rate) == 1.0


def test_diverging_trajectories_with_annealing_are_rejected_not_raised():
    """A diverged HMC trajectory at beta < 1 reaches the base energy with non-finite points:
    it must be rejected and counted, not hit the base distribution's validation error."""
    import pyro.distributions as dist

    from pyro_snf import StochasticNormalizingFlow

    def u(x):
        return 0.5 * (x**2).sum(-1) * torch.exp(-3 * x[..., 0])

    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    block = HMCBlock(2.0, 2, num_leapfrog_steps=10, beta=0.5)
    snf = StochasticNormalizingFlow(base, [block], u)
    x, log_w = snf.sample_and_log_weight((500,))
    assert not torch.isnan(log_w).any() and torch.isfinite(x).all()
    assert int(block.last_info.num_nonfinite) > 0


# -- registry, step statistics, pulled-back blocks ---------------------------------------------------


def test_every_registered_block_has_a_test_case(block_cases):
    """Adding a block class is one line in ``pyro_snf.blocks.BLOCKS`` and one in ``conftest.py``."""
    first_name: dict[type, str] = {}
    for name, cls in BLOCKS.items():
        first_name.setdefault(cls, name)
    aliases = {name for name, cls in BLOCKS.items() if first_name[cls] != name}
    assert aliases == {"rwm"}
    assert set(BLOCKS) - aliases == set(block_cases)
    for name, case in block_cases.items():
        assert case.cls is BLOCKS[name] and resolve_block(name) is case.cls


def test_metropolis_adjusted_is_the_accept_test_flag(block_case):
    cls = block_case.cls
    assert isinstance(cls.metropolis_adjusted, bool)
    assert cls.metropolis_adjusted == (cls.default_target_accept is not None)
    assert cls.metropolis_adjusted == (cls in (MetropolisBlock, MALABlock, HMCBlock))


def test_registry_names_classes_and_factories():
    assert resolve_block("rwm") is resolve_block("metropolis") is MetropolisBlock
    assert resolve_block(HMCBlock) is HMCBlock
    make = block_factory("hmc", step_size=0.3, num_leapfrog_steps=2)
    a, b = make(0.25), make(0.75)
    assert isinstance(a, HMCBlock) and a is not b and (a.beta, b.beta) == (0.25, 0.75)
    assert a.num_leapfrog_steps == 2 and float(a.step_size) == pytest.approx(0.3)
    assert isinstance(block_factory(LangevinBlock)(0.5), LangevinBlock)
    custom = lambda beta: MALABlock(0.2, beta=beta)  # noqa: E731
    assert block_factory(custom) is custom


def test_step_returns_the_statistics_of_its_call(block_case):
    block = block_case.make(beta=0.5)
    x = torch.randn(300, 3, dtype=torch.float64)
    torch.manual_seed(2)
    result = block.step(x, TARGET, BASE.normalised)
    assert isinstance(result, BlockStep) and isinstance(result.info, BlockInfo)
    assert block.last_info is result.info
    torch.manual_seed(2)
    y, dS = block.forward_step(x, TARGET, BASE.normalised)
    assert torch.equal(y, result.y) and torch.equal(dS, result.dS)
    for field, other in zip(result.info, block.last_info):
        assert torch.equal(field, other)


def test_pulled_back_block_runs_the_wrapped_block_on_the_pulled_back_energy(block_case):
    inner = block_case.make(beta=0.5)
    affine = AffineTransform(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), 1.7)
    block = PulledBackBlock(inner, [affine])
    assert block.metropolis_adjusted == inner.metropolis_adjusted and block.beta == inner.beta
    assert torch.equal(block.step_size, inner.step_size) and block.num_steps == inner.num_steps
    assert block.adapt_step_size is inner.adapt_step_size is False
    x = torch.randn(200, 3, dtype=torch.float64)
    torch.manual_seed(4)
    y, dS, info = block.step(x, TARGET, BASE.normalised)
    torch.manual_seed(4)
    y_ref, dS_ref, _ = inner.step(x, lambda w: TARGET(affine(w)), BASE.normalised)
    assert torch.equal(y, y_ref) and torch.equal(dS, dS_ref)
    assert block.last_info is info


@pytest.mark.parametrize("jacobian", [True, False])
def test_pulled_back_block_with_jacobian_samples_the_target_seen_through_a_nonlinear_map(jacobian):
    """x ~ Gamma(3, 1) is exp(-u), u(x) = x - 2 log x, on x > 0, seen through f(w) = exp(w): w = log x
    has density exp(3 w - e^w), mean digamma(3), variance trigamma(3). With the Jacobian the block
    leaves that law invariant; without it it targets u(exp(w)) = e^w - 2 w (mean digamma(2)), so the
    chain started in the right law drifts by 0.5, 100 standard errors."""
    from scipy.special import digamma, polygamma
    from torch.distributions import ExpTransform

    torch.manual_seed(0)
    x = torch.distributions.Gamma(3.0, 1.0).sample((20_000, 1)).double()
    block = PulledBackBlock(MetropolisBlock(step_size=0.8, num_steps=50), [ExpTransform()], jacobian=jacobian)
    assert ("jacobian=True" in repr(block)) is jacobian
    w, dS, _ = block.step(x.log(), lambda y: (y - 2 * y.log()).sum(-1))
    torch.testing.assert_close(dS, block.pull_back(lambda y: (y - 2 * y.log()).sum(-1))(w)
                               - block.pull_back(lambda y: (y - 2 * y.log()).sum(-1))(x.log()))
    mean = float(digamma(3.0 if jacobian else 2.0))
    se = math.sqrt(float(polygamma(1, 3.0)) / len(w))
    assert abs(float(w.mean()) - mean) < 5 * se
    if jacobian:  # the sample variance's SE: var * sqrt((2 + excess kurtosis) / n), cumulants psi^(k)(3)
        var, k4 = float(polygamma(1, 3.0)), float(polygamma(3, 3.0))
        assert abs(float(w.var()) - var) < 5 * var * math.sqrt((2 + k4 / var**2) / len(w))
