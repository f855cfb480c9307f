"""The long NUTS reference of eight schools, stored as
``pyro_snf/examples/data/eight_schools_reference.json``.

Two independent Pyro NUTS chains (seeds 0-1, 500 warmup + 2,500 draws each, diagonal mass
adaptation, target acceptance 0.9) on :func:`pyro_snf.examples.models.eight_schools_noncentered`;
the file holds the posterior mean and sd of the ten latent coordinates ``mu, tau, theta_tilde[0..7]``,
the split R-hat and bulk ESS (ArviZ), and the exact moments from quadrature (:func:`exact_moments`),
which the benchmark uses as its reference (the NUTS run cross-checks them).

    python -m benchmarks.references            # several minutes on one core
"""

from __future__ import annotations

import json
import math
import platform
from importlib import resources

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from pyro_snf.examples.datasets import eight_schools
from pyro_snf.examples.models import eight_schools_noncentered

FILE = "eight_schools_reference.json"
NAMES = ["mu", "tau"] + [f"theta_tilde[{j}]" for j in range(8)]


def exact_moments(num_points: int = 20_001) -> tuple[list[float], list[float]]:
    """Exact posterior mean and sd of ``mu, tau, theta_tilde[0..7]`` by 1-D quadrature over ``tau``.

    Given ``tau``: ``mu | tau, y`` is Gaussian (precision ``sum 1/(tau^2 + s_j^2) + 1/25``),
    ``theta_j | mu, tau, y`` is Gaussian with variance ``v_j = 1 / (1/s_j^2 + 1/tau^2)``, so
    ``theta_tilde_j = (theta_j - mu) / tau`` has conditional mean
    ``(y_j v_j / s_j^2 + (v_j / tau^2 - 1) E[mu]) / tau`` and variance
    ``((v_j / tau^2 - 1)^2 Var[mu] + v_j) / tau^2``; ``tau = 5 tan(phi)`` makes the half-Cauchy prior
    uniform in ``phi``, and the moments are mixed over the grid with the marginal likelihood as weight.
    """
    d = eight_schools(torch.float64)
    y, s2 = d["y"], d["sigma"] ** 2
    phi = torch.linspace(0.0, math.pi / 2, num_points, dtype=torch.float64)[1:-1]
    tau = (5.0 * torch.tan(phi)).unsqueeze(-1)  # (G, 1)
    var = tau**2 + s2
    prec = (1.0 / var).sum(-1, keepdim=True) + 1.0 / 25.0
    mu_mean, mu_var = (y / var).sum(-1, keepdim=True) / prec, 1.0 / prec
    cov = torch.diag_embed(var) + 25.0
    zero = torch.zeros(8, dtype=torch.float64)
    w = torch.softmax(torch.distributions.MultivariateNormal(zero, cov).log_prob(y), 0).unsqueeze(-1)
    v = 1.0 / (1.0 / s2 + 1.0 / tau**2)
    a = v / tau**2 - 1.0
    tt_mean = (y * v / s2 + a * mu_mean) / tau
    tt_var = (a**2 * mu_var + v) / tau**2
    cond_mean = torch.cat([mu_mean, tau, tt_mean], -1)  # (G, 10)
    cond_second = torch.cat([mu_var + mu_mean**2, tau**2, tt_var + tt_mean**2], -1)
    mean = (w * cond_mean).sum(0)
    sd = ((w * cond_second).sum(0) - mean**2).sqrt()
    return mean.tolist(), sd.tolist()


def long_nuts(num_chains: int = 2, warmup: int = 500, num_samples: int = 2500) -> dict:
    """Run the reference chains and summarise them (see the module docstring)."""
    import arviz as az

    d = eight_schools()
    chains = []
    for seed in range(num_chains):
        pyro.set_rng_seed(seed)
        mcmc = MCMC(NUTS(eight_schools_noncentered, target_accept_prob=0.9), num_samples=num_samples,
                    warmup_steps=warmup, disable_progbar=True)
        mcmc.run(d["J"], d["sigma"], d["y"])
        s = mcmc.get_samples()
        chains.append(torch.cat([s["mu"][:, None], s["tau"][:, None], s["theta_tilde"]], -1).double().numpy())
    draws = np.stack(chains)  # (chain, draw, 10)
    rhat = [float(az.rhat(draws[..., k])) for k in range(10)]
    ess = [float(az.ess(draws[..., k])) for k in range(10)]
    flat = draws.reshape(-1, 10)
    exact_mean, exact_sd = exact_moments()
    return {
        "names": NAMES, "mean": flat.mean(0).tolist(), "sd": flat.std(0).tolist(),
        "rhat": rhat, "ess_bulk": ess, "exact_mean": exact_mean, "exact_sd": exact_sd,
        "provenance": f"python -m benchmarks.references: Pyro {pyro.__version__} NUTS, {num_chains} chains x "
                      f"({warmup} warmup + {num_samples} draws), seeds 0-{num_chains - 1}, "
                      f"target_accept_prob 0.9, torch {torch.__version__}, {platform.machine()}",
    }


def load_reference() -> dict:
    """The stored reference (see :func:`long_nuts`)."""
    path = resources.files("pyro_snf.examples").joinpath("data", FILE)
    return json.loads(path.read_text(encoding="utf-8"))


def reference_note() -> str:
    """One sentence on how the stored long NUTS run agrees with the exact moments (or that it is missing)."""
    try:
        ref = load_reference()
    except FileNotFoundError:
        return f"the long NUTS reference ({FILE}) is not available"
    mean, sd = exact_moments()
    worst = max(abs(a - b) / s for a, b, s in zip(ref["mean"], mean, sd))
    return (f"the stored long NUTS reference ({ref['provenance'].split(': ', 1)[-1]}) agrees with them to "
            f"{worst:.3f} posterior sd at worst (max R-hat {max(ref['rhat']):.3f})")


def main() -> None:
    torch.set_num_threads(1)
    ref = long_nuts()
    path = resources.files("pyro_snf.examples").joinpath("data", FILE)
    with open(str(path), "w", encoding="utf-8") as fh:
        json.dump(ref, fh, indent=1)
    print(json.dumps({k: ref[k] for k in ("mean", "sd", "rhat", "exact_mean", "exact_sd")}))


if __name__ == "__main__":
    main()
