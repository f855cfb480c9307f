"""Exact references of the hard-posterior suite: quadrature over what does not integrate analytically,
conjugacy for the rest (float64). Each function returns ``{"log_z", "log_z_se", "mean", "sd",
"method"}`` with ``mean``/``sd`` lists in the order of :attr:`benchmarks.hard.cases.HardCase.names`.

The grids are chosen so that halving them changes log Z by < 1e-6 and the moments by < 1e-5 sd
(checked by ``tests/test_hard_references.py``, which also checks each reference against a Monte Carlo
estimate from the prior or the conjugate sampler).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from pyro_snf.examples.datasets import eight_schools, eight_schools_log_evidence

LOG2PI = math.log(2 * math.pi)


def _norm_logpdf(
    x: Tensor | np.ndarray | float, mean: Tensor | np.ndarray | float, var: Tensor | np.ndarray | float
):
    if isinstance(x, torch.Tensor) or isinstance(mean, torch.Tensor) or isinstance(var, torch.Tensor):
        return -0.5 * (LOG2PI + torch.log(torch.as_tensor(var)) + (x - mean) ** 2 / var)
    return -0.5 * (LOG2PI + np.log(var) + (x - mean) ** 2 / var)


def _log_trapz(f: Tensor, x: Tensor) -> tuple[float, Tensor]:
    """``log int exp(f) dx`` on the grid ``x`` (trapezoid rule) and the normalised quadrature weights."""
    dx = torch.diff(x)
    w = torch.zeros_like(x)
    w[:-1] += dx / 2
    w[1:] += dx / 2
    lw = f + torch.log(w)
    log_z = torch.logsumexp(lw, 0)
    return float(log_z), torch.exp(lw - log_z)


def _mix(weights: Tensor, cond_mean: Tensor, cond_var: Tensor) -> tuple[list[float], list[float]]:
    """Mean and sd of a mixture over the grid: ``cond_mean``/``cond_var`` of shape ``(G, P)``."""
    w = weights.unsqueeze(-1)
    mean = (w * cond_mean).sum(0)
    second = (w * (cond_var + cond_mean**2)).sum(0)
    return mean.tolist(), (second - mean**2).clamp_min(0).sqrt().tolist()


def _result(log_z: float, mean: list[float], sd: list[float], method: str) -> dict:
    return {"log_z": log_z, "log_z_se": 0.0, "mean": mean, "sd": sd, "method": method}


def two_modes(y: Tensor, num_points: int = 200_001) -> dict:
    y = y.double()
    th = torch.linspace(-5.0, 5.0, num_points, dtype=torch.float64)
    f = _norm_logpdf(th, 0.0, 1.0) + _norm_logpdf(y, th.unsqueeze(-1) ** 2, 1.0).sum(-1)
    log_z, w = _log_trapz(f, th)
    mean, sd = _mix(w, th.unsqueeze(-1), torch.zeros_like(th).unsqueeze(-1))
    return _result(log_z, mean, sd, "quadrature (1-D, theta)")


def mixture(y: Tensor, num_points: int = 1401, half_width: float = 7.0) -> dict:
    y = y.double()
    g = torch.linspace(-half_width, half_width, num_points, dtype=torch.float64)
    m1, m2 = torch.meshgrid(g, g, indexing="ij")
    m1, m2 = m1.reshape(-1), m2.reshape(-1)
    loglik = torch.zeros_like(m1)
    for yi in y:  # one data point at a time: (G^2,) per step
        loglik += torch.logaddexp(_norm_logpdf(yi, m1, 1.0), _norm_logpdf(yi, m2, 1.0)) - math.log(2)
    f = (loglik + _norm_logpdf(m1, 0.0, 9.0) + _norm_logpdf(m2, 0.0, 9.0)).reshape(num_points, num_points)
    # 2-D trapezoid: inner over mu_2, then outer over mu_1
    inner = torch.stack([torch.tensor(_log_trapz(row, g)[0]) for row in f]).double()
    log_z, w1 = _log_trapz(inner, g)
    w = torch.softmax(
        (f + torch.log(_trapz_weights(g)).unsqueeze(0) + torch.log(_trapz_weights(g)).unsqueeze(1)).reshape(
            -1
        ),
        0,
    )
    pts = torch.stack([m1, m2], -1)
    mean, sd = _mix(w, pts, torch.zeros_like(pts))
    return _result(log_z, mean, sd, "quadrature (2-D grid over mu)")


def _trapz_weights(x: Tensor) -> Tensor:
    dx = torch.diff(x)
    w = torch.zeros_like(x)
    w[:-1] += dx / 2
    w[1:] += dx / 2
    return w


def banana(y: float, num_points: int = 200_001) -> dict:
    """``x_2`` integrates analytically: ``y | x_1 ~ N(x_1^2, 9 + 0.01)``; ``x_2 | x_1, y`` Gaussian."""
    x1 = torch.linspace(-12.0, 12.0, num_points, dtype=torch.float64)
    f = _norm_logpdf(x1, 0.0, 9.0) + _norm_logpdf(torch.tensor(y, dtype=torch.float64), x1**2, 9.01)
    log_z, w = _log_trapz(f, x1)
    prec = 1 / 9.0 + 1 / 0.01
    m2 = (y - x1**2) / 0.01 / prec
    cond_mean = torch.stack([x1, m2], -1)
    cond_var = torch.stack([torch.zeros_like(x1), torch.full_like(x1, 1 / prec)], -1)
    mean, sd = _mix(w, cond_mean, cond_var)
    return _result(log_z, mean, sd, "quadrature over x1, x2 conjugate")


def funnel(y: Tensor, num_points: int = 200_001) -> dict:
    """``x`` integrates analytically: ``y_i | v ~ N(0, e^v + 1)``; ``x_i | v, y ~ N(r y_i, r)`` with
    ``r = e^v / (e^v + 1)``."""
    y = y.double()
    v = torch.linspace(-35.0, 35.0, num_points, dtype=torch.float64)
    ev = torch.exp(v).unsqueeze(-1)
    f = _norm_logpdf(v, 0.0, 9.0) + _norm_logpdf(y, 0.0, ev + 1).sum(-1)
    log_z, w = _log_trapz(f, v)
    r = ev / (ev + 1)
    cond_mean = torch.cat([v.unsqueeze(-1), r * y], -1)
    cond_var = torch.cat([torch.zeros_like(v).unsqueeze(-1), r.expand(-1, len(y))], -1)
    mean, sd = _mix(w, cond_mean, cond_var)
    return _result(log_z, mean, sd, "quadrature over v, x conjugate")


def eight_schools_centered(num_points: int = 200_001) -> dict:
    """``theta, mu`` integrate analytically given ``tau``; ``tau = 5 tan(phi)`` makes the half-Cauchy
    prior uniform in ``phi``."""
    d = eight_schools(torch.float64)
    y, s2 = d["y"], d["sigma"] ** 2
    phi = torch.linspace(0.0, math.pi / 2, num_points, dtype=torch.float64)[1:-1]
    tau = (5.0 * torch.tan(phi)).unsqueeze(-1)
    var = tau**2 + s2
    cov = torch.diag_embed(var) + 25.0
    f = torch.distributions.MultivariateNormal(torch.zeros(8, dtype=torch.float64), cov).log_prob(y)
    _, w = _log_trapz(f, phi)
    prec = (1.0 / var).sum(-1, keepdim=True) + 1.0 / 25.0
    mu_mean, mu_var = (y / var).sum(-1, keepdim=True) / prec, 1.0 / prec
    v = 1.0 / (1.0 / s2 + 1.0 / tau**2)
    th_mean = v * (y / s2 + mu_mean / tau**2)
    th_var = v + (v / tau**2) ** 2 * mu_var
    cond_mean = torch.cat([mu_mean, tau, th_mean], -1)
    cond_var = torch.cat([mu_var, torch.zeros_like(tau), th_var], -1)
    mean, sd = _mix(w, cond_mean, cond_var)
    return _result(
        eight_schools_log_evidence(20_001), mean, sd, "quadrature over tau, mu and theta conjugate"
    )


def regression(X: Tensor, y: Tensor, a0: float, b0: float, s0: Tensor) -> dict:
    """Normal-inverse-gamma conjugacy: ``beta`` multivariate t, ``sigma2`` inverse gamma."""
    X, y = X.double(), y.double()
    n = X.shape[0]
    prec0 = torch.diag(1 / s0.double() ** 2)
    prec = prec0 + X.T @ X
    vn = torch.linalg.inv(prec)
    mn = vn @ (X.T @ y)
    an, bn = a0 + n / 2, b0 + 0.5 * float(y @ y - mn @ prec @ mn)
    log_z = (
        math.lgamma(an)
        - math.lgamma(a0)
        + a0 * math.log(b0)
        - an * math.log(bn)
        + 0.5 * float(torch.logdet(vn) + torch.logdet(prec0))
        - n / 2 * LOG2PI
    )
    s2_mean = bn / (an - 1)
    beta_sd = (s2_mean * vn.diagonal()).sqrt()
    mean = [s2_mean] + mn.tolist()
    sd = [s2_mean / math.sqrt(an - 2)] + beta_sd.tolist()
    return _result(log_z, mean, sd, "conjugate (normal-inverse-gamma)")


def hierarchical(y: Tensor, num_points: int = 40_001) -> dict:
    """Given ``tau``: ``ybar_j ~ N(mu, tau^2 + 1/n)`` iid, ``mu`` Gaussian (matrix determinant lemma),
    ``theta_j | mu, tau, y`` Gaussian; the within-group spread is a constant factor."""
    y = y.double()
    J, n = y.shape
    ybar = y.mean(-1)
    within = float(
        -(n - 1) / 2 * LOG2PI * J - 0.5 * math.log(n) * J - 0.5 * ((y - ybar.unsqueeze(-1)) ** 2).sum()
    )
    tau = torch.linspace(0.0, 12.0, num_points, dtype=torch.float64)[1:]
    s2 = tau**2 + 1.0 / n
    c = 25.0
    sum_a, sum_a2 = float(ybar.sum()), float((ybar**2).sum())
    logdet = J * torch.log(s2) + torch.log1p(J * c / s2)
    quad = (sum_a2 - c * sum_a**2 / (s2 + J * c)) / s2
    log_prior = math.log(2) + _norm_logpdf(tau, 0.0, 4.0)
    f = log_prior - 0.5 * (J * LOG2PI + logdet + quad)
    log_z, w = _log_trapz(f, tau)
    prec = J / s2 + 1.0 / c
    mu_mean, mu_var = (sum_a / s2 / prec).unsqueeze(-1), (1.0 / prec).unsqueeze(-1)
    t = tau.unsqueeze(-1)
    v = 1.0 / (n + 1.0 / t**2)
    th_mean = v * (n * ybar + mu_mean / t**2)
    th_var = (v + (v / t**2) ** 2 * mu_var).expand(-1, J)
    cond_mean = torch.cat([mu_mean, t, th_mean], -1)
    cond_var = torch.cat([mu_var, torch.zeros_like(t), th_var], -1)
    mean, sd = _mix(w, cond_mean, cond_var)
    return _result(log_z + within, mean, sd, "quadrature over tau, mu and theta conjugate")
