"""PyMC twins of the hard-posterior cases and the two peer runners (``sample_smc`` and PyMC NUTS).

:func:`pymc_model` writes the density of each Pyro model of :mod:`benchmarks.hard.cases` term by term,
with the same site names, priors and parametrisation (centred where the Pyro model is centred), so the
scored coordinates ``case.names`` map one to one (``tests/test_hard_peers.py`` checks that the two
log joints agree to 1e-6 at random prior points). Data are the case's own arguments, cast to float64.

- two_modes: ``theta ~ N(0, 1)``, ``y_i ~ N(theta^2, 1)``.
- label_switching: ``mu ~ N(0, 3^2 I_2)``, ``y_i ~ 0.5 N(mu_1, 1) + 0.5 N(mu_2, 1)``.
- banana: ``x ~ N(0, 3^2 I_2)``, ``y ~ N(x_2 + x_1^2, 0.1^2)``, ``y = 1``.
- funnel: ``v ~ N(0, 3^2)``, ``x_i ~ N(0, e^v)``, ``y_i ~ N(x_i, 1)``.
- eight_schools_centered: ``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~ N(mu, tau^2)``,
  ``y_j ~ N(theta_j, sigma_j^2)``.
- regression_*: ``sigma2 ~ InvGamma(a0, b0)``, ``beta ~ N(0, sigma2 diag(s0^2))``, ``y ~ N(X beta, sigma2)``.
- hierarchical_500: ``mu ~ N(0, 5^2)``, ``tau ~ HalfNormal(2)``, ``theta_j ~ N(mu, tau^2)``,
  ``y_jk ~ N(theta_j, 1)``.
- stochastic_volatility: ``mu ~ N(0, 2^2)``, ``phi ~ U(-1, 1)``, ``sigma ~ HalfNormal(1)``,
  ``h_0 ~ N(mu, sigma^2 / (1 - phi^2))``, ``h_t = mu (1 - phi) + phi h_{t-1} + sigma eps_t``
  (``pm.AR`` with a constant and the stationary initial law), ``y_t ~ N(0, e^{h_t})``.

Runners return ``{"log_z", "log_z_se", "mean", "sd", "seconds", "compile_seconds", "rhat_max",
"ess_bulk_min", "status"}`` with ``mean``/``sd`` in ``case.names`` order; a failure is reported in
``status`` (``"failed: ..."``), never raised.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.hard.cases import HardCase


def _np(x: Any) -> Any:
    return x.double().numpy() if isinstance(x, torch.Tensor) else float(x)


def _two_modes(pm: Any, y: np.ndarray) -> None:
    theta = pm.Normal("theta", 0.0, 1.0)
    pm.Normal("y", theta**2, 1.0, observed=y)


def _mixture(pm: Any, y: np.ndarray) -> None:
    mu = pm.Normal("mu", 0.0, 3.0, shape=2)
    pm.NormalMixture("y", w=np.array([0.5, 0.5]), mu=mu, sigma=1.0, observed=y)


def _banana(pm: Any, y: float) -> None:
    x = pm.Normal("x", 0.0, 3.0, shape=2)
    pm.Normal("y", x[1] + x[0] ** 2, 0.1, observed=y)


def _funnel(pm: Any, y: np.ndarray) -> None:
    v = pm.Normal("v", 0.0, 3.0)
    x = pm.Normal("x", 0.0, pm.math.exp(v / 2), shape=len(y))
    pm.Normal("y", x, 1.0, observed=y)


def _eight_schools(pm: Any, sigma: np.ndarray, y: np.ndarray) -> None:
    mu = pm.Normal("mu", 0.0, 5.0)
    tau = pm.HalfCauchy("tau", 5.0)
    theta = pm.Normal("theta", mu, tau, shape=len(y))
    pm.Normal("y", theta, sigma, observed=y)


def _hierarchical(pm: Any, y: np.ndarray) -> None:
    mu = pm.Normal("mu", 0.0, 5.0)
    tau = pm.HalfNormal("tau", 2.0)
    theta = pm.Normal("theta", mu, tau, shape=y.shape[0])
    pm.Normal("y", theta[:, None], 1.0, observed=y)


def _regression(pm: Any, X: np.ndarray, y: np.ndarray, a0: float, b0: float, s0: np.ndarray) -> None:
    sigma2 = pm.InverseGamma("sigma2", alpha=a0, beta=b0)
    beta = pm.Normal("beta", 0.0, pm.math.sqrt(sigma2) * s0, shape=len(s0))
    pm.Normal("y", pm.math.dot(X, beta), pm.math.sqrt(sigma2), observed=y)


def _stochastic_volatility(pm: Any, y: np.ndarray) -> None:
    mu = pm.Normal("mu", 0.0, 2.0)
    phi = pm.Uniform("phi", -1.0, 1.0)
    sigma = pm.HalfNormal("sigma", 1.0)
    init = pm.Normal.dist(mu, sigma / pm.math.sqrt(1 - phi**2))
    rho = pm.math.stack([mu * (1 - phi), phi])
    h = pm.AR("h", rho=rho, sigma=sigma, constant=True, init_dist=init, steps=len(y) - 1)
    pm.Normal("y", 0.0, pm.math.exp(h / 2), observed=y)


_BUILDERS: dict[str, Callable[..., None]] = {
    "two_modes": _two_modes, "label_switching": _mixture, "banana": _banana, "funnel": _funnel,
    "eight_schools_centered": _eight_schools, "regression_scale": _regression,
    "regression_corr": _regression, "hierarchical_500": _hierarchical,
    "stochastic_volatility": _stochastic_volatility,
}


def pymc_model(case: HardCase) -> Any:
    """The PyMC twin ``pm.Model`` of ``case`` (same density, same latent names, float64 data)."""
    import pymc as pm

    with pm.Model(name="") as model:
        _BUILDERS[case.key](pm, *(_np(a) for a in case.args))
    return model


def _moments(case: HardCase, posterior: Any) -> tuple[list[float], list[float]]:
    """Mean and sd over chains and draws, in ``case.names`` order."""
    cols = []
    for name in case.sites:
        a = np.asarray(posterior[name].values, dtype=np.float64)
        cols.append(a.reshape(a.shape[0] * a.shape[1], -1))
    flat = np.concatenate(cols, -1)
    return flat.mean(0).tolist(), flat.std(0, ddof=1).tolist()


def _convergence(case: HardCase, posterior: Any) -> tuple[float, float]:
    """Largest rank-normalised split R-hat and smallest bulk ESS over the scored coordinates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        ds = posterior[list(case.sites)]
        rhat = az.rhat(ds)
        ess = az.ess(ds, method="bulk")
    rmax = max(float(np.nanmax(rhat[n].values)) for n in case.sites)
    emin = min(float(np.nanmin(ess[n].values)) for n in case.sites)
    return rmax, emin


def final_log_evidence(stat: Any, chains: int) -> np.ndarray:
    """The final ``log_marginal_likelihood`` of each SMC chain.

    PyMC 5 stores one value per tempering *stage* and chain, NaN at every stage but the last
    (``beta == 1``); with several chains the stages are an object array, ``(chains, stages)`` when the
    chains ran the same number of stages and ``(chains,)`` of lists when they did not. This takes the
    last finite value of each chain's sequence."""
    raw = getattr(stat, "values", stat)
    rows = list(raw) if len(raw) == chains else [raw]
    out = []
    for row in rows:
        seq = np.asarray(_flatten(row), dtype=np.float64)
        seq = seq[np.isfinite(seq)]
        out.append(seq[-1] if seq.size else math.nan)
    return np.asarray(out)


def _flatten(x: Any) -> list[float]:
    """Every number of a nested (possibly ragged) sequence or array, in order."""
    if isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim > 0):
        return [v for item in x for v in _flatten(item)]
    return [float(x)]


def combine_log_evidence(log_z: np.ndarray) -> tuple[float, float | None]:
    """Pool per-chain evidence estimates ``Z_c`` (each unbiased for ``Z``): ``log Z = log mean_c Z_c``;
    SE by the delta method, ``sd_c(Z_c / Zbar) / sqrt(C)`` (``None`` for a single chain)."""
    lz = np.asarray(log_z, dtype=np.float64)
    m = float(np.logaddexp.reduce(lz) - math.log(lz.size))
    se = float(np.std(np.exp(lz - m), ddof=1) / math.sqrt(lz.size)) if lz.size > 1 else None
    return m, se


def _failed(exc: BaseException, start: float) -> dict:
    return {"log_z": None, "log_z_se": None, "mean": None, "sd": None, "seconds": time.perf_counter() - start,
            "compile_seconds": None, "rhat_max": None, "ess_bulk_min": None,
            "status": f"failed: {type(exc).__name__}: {exc}"}


def run_smc(case: HardCase, seed: int, draws: int = 2000, chains: int = 2) -> dict:
    """``pm.sample_smc`` (IMH kernel, sequential chains on one core). ``log_z`` pools the chains'
    final log evidences with :func:`combine_log_evidence`; R-hat and ESS treat the final particles of
    each chain as a chain (their ESS is not an autocorrelation ESS, the particles are resampled).
    ``seconds`` includes PyMC's compilation (``compile_seconds`` is ``None``: SMC compiles inside)."""
    import pymc as pm

    start = time.perf_counter()
    try:
        model = pymc_model(case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            idata = pm.sample_smc(draws=draws, chains=chains, cores=1, random_seed=seed, model=model,
                                  progressbar=False, compute_convergence_checks=False)
            seconds = time.perf_counter() - t0
        log_zs = final_log_evidence(idata.sample_stats["log_marginal_likelihood"], chains)
        log_z, se = combine_log_evidence(log_zs)
        mean, sd = _moments(case, idata.posterior)
        rhat, ess = _convergence(case, idata.posterior)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return _failed(exc, start)
    return {"log_z": log_z, "log_z_se": se, "log_z_chains": log_zs.tolist(), "mean": mean, "sd": sd,
            "seconds": seconds, "compile_seconds": None, "rhat_max": rhat, "ess_bulk_min": ess,
            "status": "ok" if np.isfinite(log_z) else "failed: non-finite log evidence"}


def run_nuts(case: HardCase, seed: int, draws: int = 1000, tune: int = 1000, chains: int = 2) -> dict:
    """PyMC's own NUTS (``nuts_sampler="pymc"``, ``jitter+adapt_diag``, chains in sequence on one core).
    ``compile_seconds`` is :func:`pm.init_nuts` (graph compilation and initial points), ``seconds``
    the sampling call; ``log_z_se`` and ``log_z`` are ``None`` (NUTS gives no evidence). The status
    also counts divergences."""
    import pymc as pm

    start = time.perf_counter()
    try:
        model = pymc_model(case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            init, step = pm.init_nuts(init="jitter+adapt_diag", chains=chains, model=model,
                                      random_seed=seed, progressbar=False, quiet=True)
            compile_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=1, step=step, initvals=init,
                              random_seed=seed, model=model, nuts_sampler="pymc", progressbar=False,
                              compute_convergence_checks=False)
            seconds = time.perf_counter() - t0
        mean, sd = _moments(case, idata.posterior)
        rhat, ess = _convergence(case, idata.posterior)
        divergences = int(np.asarray(idata.sample_stats["diverging"].values).sum())
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return _failed(exc, start)
    return {"log_z": None, "log_z_se": None, "mean": mean, "sd": sd, "seconds": seconds,
            "compile_seconds": compile_seconds, "rhat_max": rhat, "ess_bulk_min": ess,
            "divergences": divergences,
            "status": "ok" if divergences == 0 else f"ok ({divergences} divergences)"}
