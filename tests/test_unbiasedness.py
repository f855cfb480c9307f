"""Importance weights of untrained SNFs are exact: ``E[w] = Z`` for any parameters.

Each test draws ``n`` paths through bijections (a fixed affine map, Pyro affine couplings with a
mildly scaled last layer, a permutation) and one stochastic block, and checks, with tolerances of
four Monte Carlo standard errors computed from the sample itself:

- ``logmeanexp(log w)`` against the exact ``log Z`` (delta-method SE);
- self-normalised first and second moments against the exact ones;
- running the chain backward from exact target samples: ``E[exp(u(x) - nll_bound(x))] = 1 / Z``.

The base is wider than the target so that the weights have finite variance, and the couplings are
mild so that the delta-method SE is reliable. With n = 40 000 the SE of log Z is about 0.01-0.02,
so a wrong sign, factor or kernel in a path term moves the estimate by many SEs.
"""

from __future__ import annotations

import functools
import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from scipy import integrate
from torch.distributions.transforms import AffineTransform

from pyro_snf import (
    HMCBlock,
    ImportanceWeights,
    LangevinBlock,
    MALABlock,
    MetropolisBlock,
    StochasticNormalizingFlow,
    UnderdampedLangevinBlock,
)
from pyro_snf.targets import DoubleWell, GaussianMixture
from pyro_snf.targets.double_well import double_well_x1_energy

K_SE = 4.0


def mild_coupling(dim: int, scale: float = 0.1) -> T.AffineCoupling:
    """A Pyro affine coupling whose last layer is scaled down: nonlinear but close to the identity."""
    coupling = T.affine_coupling(dim, hidden_dims=[16])
    last = coupling.nn.layers[-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return coupling


@functools.lru_cache(maxsize=1)
def double_well_x1_moments() -> tuple[float, float]:
    f = lambda t: math.exp(-float(double_well_x1_energy(torch.tensor(t, dtype=torch.float64))))  # noqa: E731
    z = integrate.quad(f, -6, 6, epsabs=0, epsrel=1e-12, limit=200)[0]
    m1 = integrate.quad(lambda t: t * f(t), -6, 6, epsabs=0, epsrel=1e-12, limit=200)[0] / z
    m2 = integrate.quad(lambda t: t * t * f(t), -6, 6, epsabs=0, epsrel=1e-12, limit=200)[0] / z
    return m1, m2


class ShiftedGaussian:
    """Anisotropic shifted Gaussian energy (unnormalised)."""

    mean = torch.tensor([1.0, -0.5])
    std = torch.tensor([0.6, 1.3])
    log_Z = float(torch.log(std * math.sqrt(2 * math.pi)).sum())

    def __call__(self, x):
        return 0.5 * ((x - self.mean.to(x)) / self.std.to(x)).pow(2).sum(-1)

    def sample(self, n):
        return self.mean + self.std * torch.randn(n, 2)


GMM = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), 0.7)
GMM_SHIFT = 1.5  # u = u_gmm + 1.5, so log Z = -1.5


def gmm_energy(x):
    return GMM(x) + GMM_SHIFT


def target_case(name: str):
    """``(energy, log Z, base std, step factor, exact mean, exact second moment)``."""
    if name == "gauss":
        g = ShiftedGaussian()
        return g, g.log_Z, 2.0, 1.0, g.mean.tolist(), (g.mean**2 + g.std**2).tolist()
    if name == "gmm":
        m = GMM.means.float()
        return gmm_energy, -GMM_SHIFT, 2.5, 1.0, m.mean(0).tolist(), (m.pow(2).mean(0) + GMM.std**2).tolist()
    m1, m2 = double_well_x1_moments()
    return DoubleWell(), DoubleWell.log_Z, 2.0, 0.2, [m1, 0.0], [m2, 1.0]


NUM_STEPS = {"hmc": 2}  # overrides of the registry's (conftest.py) num_steps
STEP_EXPONENT = {"mala": 1.0, "langevin": 1.0}  # overdamped steps are in units of length^2; default 0.5


def make_block(case, f: float, beta: float, **kwargs):
    """The registry's blocks (step sizes that mix noticeably); ``f`` scales the steps down for stiff
    targets: by ``f`` for overdamped dynamics, by ``sqrt(f)`` for steps in units of length."""
    step_size = case.kwargs["step_size"] * f ** STEP_EXPONENT.get(case.name, 0.5)
    overrides = {"num_steps": NUM_STEPS[case.name]} if case.name in NUM_STEPS else {}
    return case.make(step_size=step_size, beta=beta, **overrides, **kwargs)


MODES = {
    "annealed": {"beta": 0.5},
    "target": {"beta": 1.0},
    "learnable": {"beta": 0.3, "learn_beta": True, "learn_step_size": True},
}


def mixed_layers(block):
    return [
        AffineTransform(torch.tensor([0.2, -0.1]), torch.tensor([1.1, 0.9]), event_dim=1),
        mild_coupling(2),
        T.Permute(torch.tensor([1, 0])),
        block,
        mild_coupling(2),
    ]


def self_normalised(values: torch.Tensor, log_w: torch.Tensor) -> tuple[float, float]:
    """Self-normalised estimate of E[values] and its delta-method standard error."""
    p = torch.softmax(log_w.double(), 0)
    v = values.double()
    est = (p * v).sum()
    se = (p.pow(2) * (v - est).pow(2)).sum().sqrt()
    return float(est), float(se)


def assert_log_evidence(iw: ImportanceWeights, log_Z: float) -> None:
    est, se = float(iw.log_evidence), float(iw.log_evidence_stderr)
    assert abs(est - log_Z) < K_SE * se, f"log Z estimate {est:.4f} vs exact {log_Z:.4f} (SE {se:.4f})"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("target_name", ["gauss", "gmm", "double_well"])
def test_untrained_snf_weights_are_unbiased(target_name, block_case, mode):
    n = 40_000
    u, log_Z, base_std, f, mean, second = target_case(target_name)
    kwargs = dict(MODES[mode])
    beta = kwargs.pop("beta")
    block = make_block(block_case, f, beta, **kwargs)
    base = dist.Normal(torch.zeros(2), base_std).to_event(1)
    snf = StochasticNormalizingFlow(base, mixed_layers(block), u)
    with torch.no_grad():
        x = snf.rsample((n,))
        iw = ImportanceWeights(snf.log_weight(x, warn=False))
    # Unadjusted Langevin from the far tails of the wide base can overflow on the quartic double
    # well; such paths get weight zero (their exact weight is astronomically small). Allow a few.
    assert iw.num_zero <= n // 2000 and float(iw.ess_fraction) > 0.05
    assert 0.0 < float(snf.info[0].acceptance_rate) <= 1.0
    assert_log_evidence(iw, log_Z)
    for d in range(2):
        for values, exact in ((x[:, d], mean[d]), (x[:, d] ** 2, second[d])):
            est, se = self_normalised(values, iw.log_weights)
            assert abs(est - exact) < K_SE * se, f"coordinate {d}: {est:.4f} vs {exact:.4f} (SE {se:.4f})"


def test_all_block_types_in_one_annealed_chain(block_cases):
    """An AIS-like chain through every block type at increasing beta, with bijections between."""
    n = 40_000
    u = DoubleWell()
    base = dist.Normal(torch.zeros(2), 2.0).to_event(1)
    layers = [
        MetropolisBlock(0.5, 5, beta=0.0),
        mild_coupling(2),
        MALABlock(0.02, 3, beta=0.25),
        T.Permute(torch.tensor([1, 0])),
        HMCBlock(0.1, 2, beta=0.5, num_leapfrog_steps=3),
        AffineTransform(0.1, 0.95),
        LangevinBlock(0.005, 3, beta=0.75),
        mild_coupling(2),
        UnderdampedLangevinBlock(0.05, 3, beta=1.0, friction=2.0),
    ]
    assert {type(block) for block in layers} >= {case.cls for case in block_cases.values()}
    snf = StochasticNormalizingFlow(base, layers, u)
    x, iw = snf.importance_weights(n)
    assert iw.num_zero == 0
    assert_log_evidence(iw, DoubleWell.log_Z)
    left, se = self_normalised((x[:, 0] < 0).double(), iw.log_weights)
    assert abs(left - 0.15569290378886086) < K_SE * se


def test_backward_paths_from_exact_samples_are_unbiased(block_case):
    """For ``x ~ p`` and the backward chain, ``q_path / p_path`` has mean one, i.e.
    ``logmeanexp(u(x) - nll_bound(x)) = -log Z``. Checks ``backward_path`` (inverse bijections,
    backward kernels and the sign of their path terms) without knowing ``q_X``."""
    n = 40_000
    g = ShiftedGaussian()
    # base close to the target: finite variance of the weights in both directions
    base = dist.Normal(torch.tensor([0.9, -0.4]), torch.tensor([0.7, 1.4])).to_event(1)
    block = make_block(block_case, 1.0, 0.5)
    layers = [
        AffineTransform(torch.tensor([0.05, -0.05]), torch.tensor([1.05, 0.95]), event_dim=1),
        mild_coupling(2),
        block,
        mild_coupling(2),
    ]
    snf = StochasticNormalizingFlow(base, layers, g)
    x = g.sample(n)
    with torch.no_grad():
        z, nll = snf.backward_path(x)
    assert z.shape == x.shape and torch.isfinite(nll).all()
    iw = ImportanceWeights(g(x) - nll)
    assert float(iw.ess_fraction) > 0.2
    assert_log_evidence(iw, -g.log_Z)
    # Jensen: the bound is above the entropy of the target, E[-log p(x)]
    entropy = float((g(x) + g.log_Z).mean())
    assert float(nll.mean()) > entropy
