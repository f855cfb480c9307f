"""Benchmark targets: energies against exact normalisers, exact samplers against energies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from pyro_snf import ImportanceWeights
from pyro_snf.targets import (
    GMM40,
    LEFT_WELL_MASS,
    DoubleWell,
    GaussianMixture,
    ImageDensity,
    ManyWell,
    NealFunnel,
    SNFLetters,
    gmm40_means,
)
from pyro_snf.targets.double_well import LOG_Z_1D, double_well_x1_energy


def x1_density(t: float) -> float:
    return math.exp(-float(double_well_x1_energy(torch.tensor(t, dtype=torch.float64))))


def is_log_Z(target, n: int, scale: float, generator: torch.Generator) -> ImportanceWeights:
    """Importance weights of ``exp(-u)`` from N(0, scale^2 I)."""
    x = scale * torch.randn(n, target.dim, dtype=torch.float64, generator=generator)
    log_q = (-0.5 * (x / scale) ** 2 - math.log(scale * math.sqrt(2 * math.pi))).sum(-1)
    return ImportanceWeights(-target(x) - log_q)


def assert_close_in_se(iw: ImportanceWeights, log_Z: float) -> None:
    est, se = float(iw.log_evidence), float(iw.log_evidence_stderr)
    assert abs(est - log_Z) < 4 * se, f"{est:.4f} vs {log_Z:.4f} (SE {se:.4f})"
    assert se < 0.05  # the check has power


# -- double well ----------------------------------------------------------------------------------


def test_double_well_constants_by_quadrature():
    z1 = integrate.quad(x1_density, -8, 8, epsabs=0, epsrel=1e-13, limit=400)[0]
    left = integrate.quad(x1_density, -8, 0, epsabs=0, epsrel=1e-13, limit=400)[0]
    assert math.log(z1) == pytest.approx(LOG_Z_1D, abs=1e-9)
    assert DoubleWell.log_Z == pytest.approx(math.log(z1) + 0.5 * math.log(2 * math.pi), abs=1e-9)
    assert DoubleWell.log_Z == pytest.approx(10.293480, abs=1e-6)
    assert left / z1 == pytest.approx(LEFT_WELL_MASS, abs=1e-9)
    assert LEFT_WELL_MASS == pytest.approx(0.1557, abs=1e-4)


def test_double_well_log_Z_by_importance_sampling():
    iw = is_log_Z(DoubleWell(), 400_000, 2.0, torch.Generator().manual_seed(0))
    assert_close_in_se(iw, DoubleWell.log_Z)


def test_double_well_sampler_matches_energy():
    n = 100_000
    x = DoubleWell().sample(n, dtype=torch.float64)
    assert x.shape == (n, 2)
    grid = np.linspace(-5, 5, 200_001)
    dens = np.exp(-double_well_x1_energy(torch.from_numpy(grid)).numpy())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    assert stats.kstest(x[:, 0].numpy(), lambda t: np.interp(t, grid, cdf)).pvalue > 1e-3
    assert stats.kstest(x[:, 1].numpy(), stats.norm().cdf).pvalue > 1e-3
    left = (x[:, 0] < 0).double()
    se = math.sqrt(LEFT_WELL_MASS * (1 - LEFT_WELL_MASS) / n)
    assert abs(float(left.mean()) - LEFT_WELL_MASS) < 4 * se
    # reverse importance sampling: E_p[q(x) / p(x)] = 1 for any normalised q
    q = torch.distributions.Normal(torch.tensor([0.5, 0.0], dtype=torch.float64), 1.5)
    ratio = (q.log_prob(x).sum(-1) + DoubleWell()(x) + DoubleWell.log_Z).exp()
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(n)


def test_many_well():
    target = ManyWell(4)
    assert target.log_Z == pytest.approx(2 * DoubleWell.log_Z)
    x = torch.randn(10, 4, dtype=torch.float64)
    dw = DoubleWell()
    assert torch.allclose(target(x), dw(x[:, :2]) + dw(x[:, 2:]))
    iw = is_log_Z(target, 400_000, 2.0, torch.Generator().manual_seed(1))
    assert_close_in_se(iw, target.log_Z)
    s = target.sample(50_000, dtype=torch.float64)
    assert s.shape == (50_000, 4)
    for d in (0, 2):
        left = float((s[:, d] < 0).double().mean())
        assert abs(left - LEFT_WELL_MASS) < 4 * math.sqrt(LEFT_WELL_MASS * (1 - LEFT_WELL_MASS) / 50_000)
    # independent pairs: the two x1 coordinates are uncorrelated
    r = float(np.corrcoef(s[:, 0].numpy(), s[:, 2].numpy())[0, 1])
    assert abs(r) < 4 / math.sqrt(50_000)
    with pytest.raises(ValueError, match="even dimension"):
        ManyWell(3)


# -- funnel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 10])
def test_funnel_energy_is_normalised_log_density(dim):
    target = NealFunnel(dim)
    x = target.sample(1000, dtype=torch.float64)
    v, rest = x[:, 0], x[:, 1:]
    zero, three = torch.tensor(0.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    log_p = torch.distributions.Normal(zero, three).log_prob(v) + torch.distributions.Normal(
        zero, (0.5 * v).exp().unsqueeze(-1)).log_prob(rest).sum(-1)
    assert torch.allclose(target(x), -log_p, rtol=1e-10, atol=1e-8)
    assert target.log_Z == 0.0


def test_funnel_sampler():
    n = 50_000
    x = NealFunnel(5).sample(n, dtype=torch.float64)
    v = x[:, 0]
    assert stats.kstest(v.numpy(), stats.norm(0, 3).cdf).pvalue > 1e-3
    standardised = x[:, 1:] * torch.exp(-0.5 * v).unsqueeze(-1)
    for d in range(4):
        assert stats.kstest(standardised[:, d].numpy(), stats.norm().cdf).pvalue > 1e-3


# -- Gaussian mixtures ----------------------------------------------------------------------------


def test_gmm40_means_are_the_pinned_ones():
    torch.manual_seed(0)
    regenerated = (torch.rand(40, 2) - 0.5) * 2 * 40
    assert torch.allclose(gmm40_means().float(), regenerated, atol=1e-5)


def test_gmm_energy_is_mixture_log_density():
    target = GMM40()
    assert target.dim == 2 and target.num_modes == 40 and target.log_Z == 0.0
    assert target.std == pytest.approx(math.log1p(math.e))
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.full((40,), 1 / 40, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(target.means, target.std), 1))
    x = 50 * torch.rand(2000, 2, dtype=torch.float64) - 25
    assert torch.allclose(target(x), -mix.log_prob(x), rtol=1e-10, atol=1e-8)


def test_gmm40_log_Z_by_importance_sampling_and_sampler_modes():
    target = GMM40()
    iw = is_log_Z(target, 400_000, 25.0, torch.Generator().manual_seed(2))
    assert_close_in_se(iw, 0.0)
    x = target.sample(40_000, dtype=torch.float64)
    counts = (target.mode_counts(x) * 40_000).numpy()
    assert abs(counts.sum() - 40_000) < 1e-6
    # nearest-mean assignment of the samples: about uniform over the 40 modes (close modes can
    # swap a few samples, which a chi-square test at p > 1e-3 tolerates)
    assert stats.chisquare(counts).pvalue > 1e-3
    weighted = target.mode_counts(x[:2], weights=torch.tensor([1.0, 3.0]))
    assert float(weighted.sum()) == pytest.approx(1.0) and float(weighted.max()) >= 0.75


def test_gaussian_mixture_sampler_moments():
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]])
    target = GaussianMixture(means, 0.5)
    n = 60_000
    x = target.sample(n, dtype=torch.float64)
    exact_mean = means.double().mean(0)
    exact_var = means.double().var(0, unbiased=False) + 0.25
    se = (x.var(0) / n).sqrt()
    assert ((x.mean(0) - exact_mean).abs() < 4 * se).all()
    m4 = (x - x.mean(0)).pow(4).mean(0)
    se_var = ((m4 - x.var(0) ** 2) / n).sqrt()
    assert ((x.var(0) - exact_var).abs() < 4 * se_var).all()


def test_weighted_mixture_sampler_and_normaliser():
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]])
    weights = torch.tensor([1.0, 2.0, 5.0])
    target = GaussianMixture(means, 0.5, weights)
    n = 60_000
    x = target.sample(n, dtype=torch.float64, device="cpu")
    exact_mean = (weights[:, None] / 8 * means).sum(0).double()
    se = (x.var(0) / n).sqrt()
    assert ((x.mean(0) - exact_mean).abs() < 4 * se).all()
    # the mode masses are multinomial(n, w): chi-square against the weights
    counts = (target.mode_counts(x) * n).numpy()
    assert stats.chisquare(counts, f_exp=(weights / 8 * n).numpy()).pvalue > 1e-3
    assert_close_in_se(is_log_Z(target, 400_000, 3.0, torch.Generator().manual_seed(1)), 0.0)


def test_snf_letters_normalised_on_a_grid_and_sampler_inside_the_strokes():
    target = SNFLetters()
    # Riemann sum of exp(-u) on a fine grid covering the picture (8 x 2.9 units) with a margin:
    # the mixture of 462 Gaussians of std 0.08 integrates to 1 (the quadrature error is ~1e-6).
    h = 0.02
    g1, g2 = torch.arange(-4.6, 4.6, h, dtype=torch.float64), torch.arange(-2.0, 2.0, h, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g1, g2, indexing="ij"), -1).reshape(-1, 2)
    assert float(torch.exp(-target(grid)).sum() * h * h) == pytest.approx(1.0, abs=1e-4)
    # exact samples sit within a few std of a lit pixel centre
    x = target.sample(5_000, dtype=torch.float64)
    dist_to_pixel = torch.cdist(x, target.means).min(-1).values
    assert float(dist_to_pixel.max()) < 5 * target.std
    # the picture is upright: the "S" is on the left, the top bar of the "F" on the upper right
    assert float(target.means[:, 0].min()) < -3.9 and float(target.means[:, 1].max()) > 1.3


def test_image_density_rejects_bad_pictures():
    with pytest.raises(ValueError, match="non-negative"):
        ImageDensity(torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        ImageDensity(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        ImageDensity(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), 1.0, torch.tensor([1.0, -1.0]))


# -- dtype, device, shapes ------------------------------------------------------------------------


TARGETS = {
    "double_well": DoubleWell,
    "many_well": lambda: ManyWell(6),
    "funnel": lambda: NealFunnel(4),
    "gmm40": GMM40,
    "snf_letters": SNFLetters,
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_targets_follow_dtype_and_device(name, dtype, device):
    target = TARGETS[name]()
    x = target.sample(7, dtype=dtype, device=device)
    assert x.shape == (7, target.dim) and x.dtype == dtype and x.device == device
    u = target(x)
    assert u.shape == (7,) and u.dtype == dtype and u.device == device and torch.isfinite(u).all()
    batched = target(torch.randn(3, 5, target.dim, dtype=dtype, device=device))
    assert batched.shape == (3, 5) and batched.dtype == dtype
    with pytest.raises(ValueError, match="dimension"):
        target(torch.randn(4, target.dim + 1, dtype=dtype, device=device))
    assert repr(target).startswith(type(target).__name__)
