"""Stored references of the hard-posterior suite (cases without a closed form): ``python -m
benchmarks.hard.make_references`` writes ``data/stochastic_volatility.json``; :func:`stored_reference`
reads it.

Stochastic volatility (:func:`benchmarks.hard.cases.stochastic_volatility_model`), ``theta = (mu, phi,
sigma)``: ``mu ~ N(0, 2^2)``, ``phi ~ U(-1, 1)``, ``sigma ~ HalfNormal(1)``, ``h_0 ~ N(mu, sigma^2 / (1 -
phi^2))``, ``h_t ~ N(mu + phi (h_{t-1} - mu), sigma^2)``, ``y_t ~ N(0, e^{h_t})``, T = 200.

- **Moments**: NumPyro NUTS (float64, 4 chains, ``target_accept = 0.99``) on the same posterior written
  non-centred, ``h_0 = mu + z_0 sigma / sqrt(1 - phi^2)``, ``h_t = mu + phi (h_{t-1} - mu) + sigma z_t``,
  ``z ~ N(0, I)`` (the centred form mixes far too slowly in ``phi``; ``h`` is a bijection of ``z`` with
  constant Jacobian ``sigma^T / sqrt(1 - phi^2)``, so the posterior of ``(theta, h)`` is unchanged: the
  script checks that the NumPyro log joint minus the log Jacobian is the Pyro log joint). It asserts
  bulk ESS >= 1000 and rank-normalised split R-hat <= 1.01 on every coordinate.
- **log Z**: importance sampling over ``u = (mu, atanh(phi), log sigma)``, ``Z = E_q[p(u) p(y | theta(u))
  / q(u)]`` with ``p(u) = p(theta) |d theta / du|`` (``|d theta / du| = (1 - phi^2) sigma``) and the
  defensive proposal ``q = 0.9 t_5(mean, cov of the NUTS draws) + 0.1 p(u)`` (weights bounded by
  ``10 p(y | theta)``), ``p(y | theta)`` replaced by a bootstrap particle filter's unbiased estimate
  (systematic resampling; the unbiased estimate keeps ``E[w] = Z``). ``log Z = log mean w``, SE by the
  delta method ``sd(w / mean w) / sqrt(M)``. A second run (other seed, half the particles) checks it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATA = Path(__file__).parent / "data"
COMMAND = "python -m benchmarks.hard.make_references"
LOG2PI = math.log(2 * math.pi)


def stored_reference(key: str) -> dict:
    """The stored reference of ``key``: ``{"log_z", "log_z_se", "mean", "sd", "method", "diagnostics", ...}``
    (``mean``/``sd`` in ``case.names`` order)."""
    path = DATA / f"{key}.json"
    if not path.exists():
        raise FileNotFoundError(f"no stored reference {path}: make it with `{COMMAND}` (about 10 minutes)")
    return json.loads(path.read_text())


# -- moments: NumPyro NUTS ------------------------------------------------------------------------------
def nuts_moments(y: np.ndarray, names: list[str], draws: int, warmup: int,
                 seed: int) -> tuple[dict, np.ndarray]:
    """Mean and sd of ``(mu, phi, sigma, h)`` (``names`` order) and the diagnostics; also the
    ``(num_draws, 3)`` draws of ``theta``."""
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import arviz as az
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import log_density

    numpyro.enable_x64()
    T = len(y)

    def model(y: jax.Array) -> None:
        mu = numpyro.sample("mu", nd.Normal(0.0, 2.0))
        phi = numpyro.sample("phi", nd.Uniform(-1.0, 1.0))
        sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))
        z = numpyro.sample("z", nd.Normal(0.0, 1.0).expand([T]).to_event(1))
        e0 = z[0] * sigma / jnp.sqrt(1 - phi**2)
        _, rest = jax.lax.scan(lambda c, zt: (phi * c + sigma * zt,) * 2, e0, z[1:])
        h = numpyro.deterministic("h", mu + jnp.concatenate([e0[None], rest]))
        numpyro.sample("y", nd.Normal(0.0, jnp.exp(h / 2)), obs=y)

    _check_same_posterior(model, log_density, jnp.asarray(y))
    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(model, target_accept_prob=0.99), num_warmup=warmup, num_samples=draws, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(y), extra_fields=("diverging",))
    seconds = time.perf_counter() - t0
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items() if k != "z"}
    ds = az.convert_to_dataset(samples)
    ess, ess_tail, rhat = az.ess(ds, method="bulk"), az.ess(ds, method="tail"), az.rhat(ds)
    flat = np.concatenate([samples[k].reshape(4 * draws, -1) for k in ("mu", "phi", "sigma", "h")], -1)
    ess_all = np.concatenate([np.ravel(ess[k].values) for k in ("mu", "phi", "sigma", "h")])
    rhat_all = np.concatenate([np.ravel(rhat[k].values) for k in ("mu", "phi", "sigma", "h")])
    tail_all = np.concatenate([np.ravel(ess_tail[k].values) for k in ("mu", "phi", "sigma", "h")])
    sd = flat.std(0, ddof=1)
    diag = {"sampler": "numpyro NUTS, non-centred h, target_accept 0.99, 4 chains", "draws_per_chain": draws,
            "warmup": warmup, "seconds": seconds, "ess_bulk_min": float(ess_all.min()),
            "ess_bulk_min_at": names[int(ess_all.argmin())], "ess_tail_min": float(tail_all.min()),
            "rhat_max": float(rhat_all.max()), "rhat_max_at": names[int(rhat_all.argmax())],
            "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
            "mcse_mean_max_in_sd": float((1 / np.sqrt(ess_all)).max())}
    assert diag["ess_bulk_min"] >= 1000, f"bulk ESS {diag['ess_bulk_min']:.0f} < 1000: run more draws"
    assert diag["rhat_max"] <= 1.01, f"R-hat {diag['rhat_max']:.4f} > 1.01: run more draws"
    moments = {"mean": flat.mean(0).tolist(), "sd": sd.tolist(), "nuts": diag}
    return moments, flat[:, :3]


def _check_same_posterior(model: object, log_density: object, y: object) -> None:
    """At a random point: NumPyro's non-centred log joint ``- log(sigma^T / sqrt(1 - phi^2))`` equals the
    Pyro model's log joint at the same ``(theta, h)``."""
    import pyro

    from benchmarks.hard.cases import stochastic_volatility_model

    rng = np.random.default_rng(0)
    theta = {"mu": -1.1, "phi": 0.7, "sigma": 0.3}
    z = rng.normal(size=len(y))
    lp_nc, tr = log_density(model, (y,), {}, {**theta, "z": z})
    h = torch.tensor(np.array(tr["h"]["value"]))
    values = {k: torch.tensor(v, dtype=torch.float64) for k, v in theta.items()} | {"h": h}
    cond = pyro.poutine.condition(stochastic_volatility_model, data=values)
    lp_pyro = float(pyro.poutine.trace(cond).get_trace(torch.tensor(np.array(y))).log_prob_sum())
    log_jac = len(y) * math.log(theta["sigma"]) - 0.5 * math.log(1 - theta["phi"] ** 2)
    assert abs(float(lp_nc) - log_jac - lp_pyro) < 1e-8 * abs(lp_pyro), (float(lp_nc) - log_jac, lp_pyro)


# -- log Z: importance sampling over theta with a particle filter -------------------------------------
def _systematic(log_w: Tensor, gen: torch.Generator) -> Tensor:
    """Systematic resampling of each row of ``log_w`` (``(M, N)``): ancestor indices ``(M, N)``."""
    M, N = log_w.shape
    cdf = torch.cumsum(torch.softmax(log_w, -1), -1)
    u = (torch.arange(N, dtype=log_w.dtype) + torch.rand(M, 1, generator=gen, dtype=log_w.dtype)) / N
    return torch.searchsorted(cdf, u).clamp_(max=N - 1)


def bootstrap_log_likelihood(y: Tensor, mu: Tensor, phi: Tensor, sigma: Tensor, num_particles: int,
                             gen: torch.Generator) -> Tensor:
    """Bootstrap particle filter, one per ``theta`` (``(M,)`` each): ``log p_hat(y | theta)``, ``(M,)``,
    with ``p_hat = prod_t mean_i g(y_t | h_t^i)`` (unbiased for ``p(y | theta)``), ``h_0^i`` from the
    stationary law, ``h_t^i`` from the AR(1) transition of a systematically resampled ancestor."""
    mu, phi, sigma = (t[:, None] for t in (mu, phi, sigma))
    shape = (mu.shape[0], num_particles)
    h = mu + sigma / torch.sqrt(1 - phi**2) * torch.randn(shape, generator=gen, dtype=y.dtype)
    log_lik = torch.zeros(shape[0], dtype=y.dtype)
    log_w = torch.zeros(shape, dtype=y.dtype)
    for t in range(len(y)):
        if t:
            h = mu + phi * (h.gather(1, _systematic(log_w, gen)) - mu)
            h = h + sigma * torch.randn(shape, generator=gen, dtype=y.dtype)
        log_w = -0.5 * (LOG2PI + h + y[t] ** 2 * torch.exp(-h))
        log_lik = log_lik + torch.logsumexp(log_w, -1) - math.log(num_particles)
    return log_lik


def _theta(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return u[:, 0], torch.tanh(u[:, 1]), torch.exp(u[:, 2])


def prior_log_density_u(u: Tensor) -> Tensor:
    """``log p(u) = log N(mu; 0, 4) + log(1/2) + log(1 - phi^2) + log HalfNormal(sigma; 1) + log sigma``."""
    v = u[:, 1].abs()
    log1m_phi2 = 2 * (math.log(2) - v - torch.log1p(torch.exp(-2 * v)))
    return (-0.5 * (LOG2PI + math.log(4) + u[:, 0] ** 2 / 4) - math.log(2) + log1m_phi2
            + 0.5 * math.log(2 / math.pi) - 0.5 * torch.exp(2 * u[:, 2]) + u[:, 2])


def log_evidence(y: Tensor, theta_draws: np.ndarray, num_draws: int, num_particles: int, seed: int,
                 chunk: int = 400) -> dict:
    """One importance-sampling estimate of log Z (see the module docstring) and its diagnostics."""
    import pyro.distributions as dist

    from pyro_snf.diagnostics.arviz_compat import psis_khat

    th = torch.as_tensor(theta_draws, dtype=torch.float64)
    u_nuts = torch.stack([th[:, 0], torch.atanh(th[:, 1]), torch.log(th[:, 2])], -1)
    t5 = dist.MultivariateStudentT(torch.tensor(5.0, dtype=torch.float64), u_nuts.mean(0),
                                   torch.linalg.cholesky(torch.cov(u_nuts.T)))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_prior = num_draws // 10
    z = torch.randn(n_prior, 2, generator=gen, dtype=torch.float64)
    phi = 2 * torch.rand(n_prior, generator=gen, dtype=torch.float64) - 1
    u_prior = torch.stack([2 * z[:, 0], torch.atanh(phi), torch.log(z[:, 1].abs())], -1)
    u = torch.cat([t5.sample((num_draws - n_prior,)), u_prior])
    log_q = torch.logaddexp(math.log(0.9) + t5.log_prob(u), math.log(0.1) + prior_log_density_u(u))
    t0 = time.perf_counter()
    log_lik = torch.cat([bootstrap_log_likelihood(y, *_theta(c), num_particles, gen) for c in u.split(chunk)])
    log_w = prior_log_density_u(u) + log_lik - log_q
    log_z = float(torch.logsumexp(log_w, 0) - math.log(num_draws))
    w = torch.exp(log_w - log_z)
    wn = w / w.sum()
    mu, phi, sigma = _theta(u)
    theta = torch.stack([mu, phi, sigma], -1)
    mean = (wn[:, None] * theta).sum(0)
    mean_se = (wn[:, None] ** 2 * (theta - mean) ** 2).sum(0).sqrt()
    return {"log_z": log_z, "log_z_se": float(w.std() / math.sqrt(num_draws)), "num_draws": num_draws,
            "num_particles": num_particles, "seed": seed, "seconds": time.perf_counter() - t0,
            "ess": float(1 / (wn**2).sum()), "khat": psis_khat(log_w),
            "theta_mean": mean.tolist(), "theta_mean_se": mean_se.tolist()}


def particle_filter_variance(y: Tensor, theta: np.ndarray, num_particles: int, reps: int, seed: int) -> float:
    """Variance of ``log p_hat(y | theta)`` over ``reps`` independent filters at one ``theta``."""
    t = torch.as_tensor(theta, dtype=torch.float64).expand(reps, 3)
    gen = torch.Generator().manual_seed(seed)
    return float(bootstrap_log_likelihood(y, t[:, 0], t[:, 1], t[:, 2], num_particles, gen).var())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write benchmarks/hard/data/stochastic_volatility.json.")
    p.add_argument("--draws", type=int, default=8000, help="NUTS draws per chain (4 chains)")
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--is-draws", type=int, default=12000, help="importance draws of theta per estimate")
    p.add_argument("--particles", type=int, default=500, help="particles (the check uses half)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from benchmarks.hard.cases import cases

    start = time.perf_counter()
    case = next(c for c in cases() if c.key == "stochastic_volatility")
    y = case.args[0].double()
    moments, theta = nuts_moments(y.numpy(), case.names, a.draws, a.warmup, seed=0)
    print("NUTS", json.dumps(moments["nuts"]), flush=True)
    main_est = log_evidence(y, theta, a.is_draws, a.particles, seed=1)
    print("log Z", json.dumps(main_est), flush=True)
    check = log_evidence(y, theta, a.is_draws, a.particles // 2, seed=2)
    print("check", json.dumps(check), flush=True)
    rng = np.random.default_rng(3)
    pf = {"num_particles": a.particles, "reps": 100,
          "var_at_posterior_mean": particle_filter_variance(y, theta.mean(0), a.particles, 100, seed=4),
          "var_at_posterior_draws": [particle_filter_variance(y, theta[i], a.particles, 100, seed=5 + j)
                                     for j, i in enumerate(rng.choice(len(theta), 6, replace=False))]}
    diff = (main_est["log_z"] - check["log_z"]) / math.hypot(main_est["log_z_se"], check["log_z_se"])
    nuts_mcse = np.asarray(moments["sd"][:3]) / math.sqrt(moments["nuts"]["ess_bulk_min"])
    z_theta = ((np.asarray(main_est["theta_mean"]) - np.asarray(moments["mean"][:3]))
               / np.hypot(np.asarray(main_est["theta_mean_se"]), nuts_mcse))
    out = {"key": case.key, "log_z": main_est["log_z"], "log_z_se": main_est["log_z_se"],
           "mean": moments["mean"], "sd": moments["sd"], "names": case.names,
           "method": "moments: NumPyro NUTS (4 chains, non-centred); log Z: defensive t/prior importance "
                     "sampling over theta with bootstrap particle-filter likelihoods",
           "diagnostics": {"nuts": moments["nuts"], "log_z_estimates": [main_est, check],
                           "log_z_difference_in_se": diff,
                           "particle_filter": pf, "theta_mean_is_minus_nuts_in_se": z_theta.tolist(),
                           "seconds_total": time.perf_counter() - start}}
    DATA.mkdir(exist_ok=True)
    (DATA / f"{case.key}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {DATA / (case.key + '.json')}: log Z = {out['log_z']:.4f} +- {out['log_z_se']:.4f} "
          f"({out['diagnostics']['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
