"""The exact references of the hard-posterior suite (``benchmarks.hard.exact``): converged grids, and each
log Z checked by an independent route (prior importance sampling with its Monte Carlo SE, Bayes' rule
at a point for the conjugate regressions, a dense Gaussian for the 500-group marginal)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from benchmarks.hard import cases as C
from benchmarks.hard import exact
from pyro_snf.infer.posterior_checks import prior_draws

GRIDS = {
    "two_modes": (lambda n: exact.two_modes(*C.two_modes_data(), num_points=n), 200_001),
    "banana": (lambda n: exact.banana(1.0, num_points=n), 200_001),
    "funnel": (lambda n: exact.funnel(*C.funnel_data(), num_points=n), 200_001),
    "eight_schools_centered": (lambda n: exact.eight_schools_centered(num_points=n), 200_001),
    "hierarchical_500": (lambda n: exact.hierarchical(*C.hierarchical_data(), num_points=n), 40_001),
    "label_switching": (lambda n: exact.mixture(*C.mixture_data(), num_points=n), 1401),
}


@pytest.mark.parametrize("key", sorted(GRIDS))
def test_halving_the_grid_changes_nothing_that_matters(key):
    fn, n = GRIDS[key]
    fine, coarse = fn(n), fn((n + 1) // 2)
    assert abs(fine["log_z"] - coarse["log_z"]) < 1e-6
    for a, b, s in zip(fine["mean"], coarse["mean"], fine["sd"]):
        assert abs(a - b) < 1e-4 * s
    for a, b in zip(fine["sd"], coarse["sd"]):
        assert abs(a - b) < 1e-4 * a


PRIOR_CASES = ["two_modes", "label_switching", "banana", "funnel", "eight_schools_centered"]


@pytest.mark.parametrize("key", PRIOR_CASES)
def test_prior_importance_sampling_agrees_with_the_quadrature(key):
    case = next(c for c in C.cases() if c.key == key)
    pyro.set_rng_seed(0)
    res = prior_draws(case.model, case.args, {}, 100_000)
    ref = case.reference()
    assert res.khat < 0.7
    assert abs(res.log_evidence - ref["log_z"]) < 4 * res.log_evidence_stderr + 1e-3
    x = case.flatten(res.samples)
    w = res.normalized_weights.double()
    mean = w @ x
    se = ((w[:, None] * (x - mean)) ** 2).sum(0).sqrt()
    assert bool((abs(mean - torch.tensor(ref["mean"], dtype=torch.float64)) < 4 * se + 1e-3).all())


@pytest.mark.parametrize("design", ["scale", "corr"])
def test_regression_evidence_by_bayes_rule_at_a_point(design):
    X, y, a0, b0, s0 = C.regression_data(design)
    ref = exact.regression(X, y, a0, b0, s0)
    X, y, s0 = X.double(), y.double(), s0.double()
    prec = torch.diag(s0**-2) + X.T @ X
    vn = torch.linalg.inv(prec)
    mn = vn @ (X.T @ y)
    an = a0 + len(y) / 2
    bn = b0 + 0.5 * float(y @ y - mn @ prec @ mn)
    s2, beta = 2.0, mn + 0.1  # any point: log p(y) = log p(y, theta) - log p(theta | y)
    a0, b0, an, bn = (torch.tensor(v, dtype=torch.float64) for v in (a0, b0, an, bn))
    joint = (dist.InverseGamma(a0, b0).log_prob(torch.tensor(s2, dtype=torch.float64))
             + dist.Normal(0.0, math.sqrt(s2) * s0).log_prob(beta).sum()
             + dist.Normal(X @ beta, math.sqrt(s2)).log_prob(y).sum())
    post = (dist.InverseGamma(an, bn).log_prob(torch.tensor(s2, dtype=torch.float64))
            + dist.MultivariateNormal(mn, s2 * vn).log_prob(beta))
    assert float(joint - post) == pytest.approx(ref["log_z"], abs=1e-8)


def test_hierarchical_marginal_matches_a_dense_gaussian():
    """At fixed tau, the closed form behind ``exact.hierarchical`` is ``log N(ybar; 0, s^2 I + 25 11^T)``."""
    (y,) = C.hierarchical_data()
    ybar = y.double().mean(-1)[:50]
    J, tau, c = len(ybar), 0.7, 25.0
    s2 = tau**2 + 0.5
    cov = s2 * torch.eye(J, dtype=torch.float64) + c
    dense = dist.MultivariateNormal(torch.zeros(J, dtype=torch.float64), cov).log_prob(ybar)
    logdet = J * math.log(s2) + math.log1p(J * c / s2)
    quad = (float((ybar**2).sum()) - c * float(ybar.sum()) ** 2 / (s2 + J * c)) / s2
    assert float(dense) == pytest.approx(-0.5 * (J * math.log(2 * math.pi) + logdet + quad), abs=1e-9)
