"""Small real data sets for benchmarks and tutorials, shipped in ``pyro_snf/examples/data/``.

- Bayesian logistic regression (UCI, CC BY 4.0; see ``data/README.md``): ``ionosphere`` (D = 35),
  ``sonar`` (D = 61), ``german`` (D = 25). :func:`load_logistic` standardises every feature to mean 0,
  sd 1 (population sd, ``ddof=0``; a constant column stays 0) and prepends an intercept column, the
  convention of the flow-sampling literature that the reference log evidence refers to.
- Eight schools (posteriordb, BSD-3-Clause): :func:`eight_schools`.

:data:`REFERENCE_LOG_EVIDENCE` maps each data set to ``(log p(y), standard error)`` for the models
of :mod:`pyro_snf.examples.models`: for logistic regression from two independent estimators (multivariate-t
importance sampling with 10^6 draws and adaptive tempered SMC with 8192 particles, see
``data/README.md``), for eight schools exact up to quadrature error (:func:`eight_schools_log_evidence`).

Example::

    >>> X, y = load_logistic("german")
    >>> tuple(X.shape), tuple(y.shape), float(X[:, 0].min()), REFERENCE_LOG_EVIDENCE["german"]
    ((1000, 25), (1000,), 1.0, (-529.18, 0.05))
    >>> data = eight_schools()
    >>> data["J"], tuple(data["sigma"].shape)
    (8, (8,))
"""

from __future__ import annotations

import json
import math
from importlib import resources

import torch
from torch import Tensor

LOGISTIC_FILES = {"ionosphere": "ionosphere.csv", "sonar": "sonar.csv", "german": "german_numeric.csv"}

#: data set -> (reference log evidence, its standard error).
REFERENCE_LOG_EVIDENCE: dict[str, tuple[float, float]] = {
    "ionosphere": (-111.61, 0.05),
    "german": (-529.18, 0.05),
    "sonar": (-108.39, 0.10),
    "eight_schools": (-31.311347, 1e-6),
}


def _read(name: str) -> str:
    return resources.files("pyro_snf.examples").joinpath("data", name).read_text(encoding="utf-8")


def load_logistic(name: str, dtype: torch.dtype | None = None,
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(X, y)`` of a logistic-regression data set: ``X`` standardised with an intercept column
    first (shape ``(n, D)``), ``y`` in ``{0, 1}`` (shape ``(n,)``), both of ``dtype`` (default:
    torch's default dtype) on ``device``."""
    if name not in LOGISTIC_FILES:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(LOGISTIC_FILES)}")
    lines = _read(LOGISTIC_FILES[name]).strip().splitlines()
    raw = torch.tensor([[float(v) for v in line.split(",")] for line in lines[1:]], dtype=torch.float64)
    features, y = raw[:, :-1], raw[:, -1]
    sd = features.std(0, unbiased=False)
    scaled = (features - features.mean(0)) / torch.where(sd > 0, sd, torch.ones_like(sd))
    X = torch.cat([torch.ones(len(raw), 1, dtype=torch.float64), scaled], dim=1)
    dtype = dtype or torch.get_default_dtype()
    return X.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)


def eight_schools(dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> dict:
    """The eight-schools data: ``{"J": 8, "y": (8,) tensor, "sigma": (8,) tensor}``."""
    raw = json.loads(_read("eight_schools.json"))
    dtype = dtype or torch.get_default_dtype()
    return {"J": int(raw["J"]), "y": torch.tensor(raw["y"], dtype=dtype, device=device),
            "sigma": torch.tensor(raw["sigma"], dtype=dtype, device=device)}


def eight_schools_log_evidence(num_points: int = 20_001) -> float:
    """Exact ``log p(y)`` of :func:`pyro_snf.examples.models.eight_schools_noncentered` by quadrature.

    ``theta`` and ``mu`` integrate out analytically (``y ~ N(0, diag(tau^2 + sigma^2) + 25)``);
    ``tau = 5 tan(phi)`` maps the half-Cauchy(5) prior to ``Uniform(0, pi/2)``, integrated by the
    trapezoid rule (converged to 1e-12 at 2,001 points).

    Example::

        >>> round(eight_schools_log_evidence(2001), 6)
        -31.311347
    """
    data = eight_schools(torch.float64)
    phi = torch.linspace(0.0, math.pi / 2, num_points, dtype=torch.float64)[:-1]  # integrand 0 at pi/2
    tau = 5.0 * torch.tan(phi)
    cov = torch.diag_embed(tau.unsqueeze(-1) ** 2 + data["sigma"] ** 2) + 25.0
    zero = torch.zeros(8, dtype=torch.float64)
    log_lik = torch.distributions.MultivariateNormal(zero, cov).log_prob(data["y"])
    h = float(phi[1] - phi[0])
    log_w = torch.full_like(phi, math.log(h))
    log_w[0] = math.log(h / 2)
    return float(torch.logsumexp(log_lik + log_w, 0)) + math.log(2 / math.pi)
