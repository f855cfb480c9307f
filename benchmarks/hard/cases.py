"""The cases of the hard-posterior suite: Pyro models, their data and their references.

Each :class:`HardCase` has a vectorisable Pyro model (``model(*args)``), the names of its scored
coordinates (every latent coordinate, constrained: ``site[i]`` for vector sites), and a reference
``{"log_z", "log_z_se", "mean", "sd", "method"}`` from :mod:`benchmarks.hard.exact` (quadrature or
conjugacy: ``log_z_se = 0``) or from the stored file of :mod:`benchmarks.hard.make_references` (long
NUTS for the moments). Data are made from fixed seeds here, so every run scores the same posterior.

The math of each model is written out in its docstring so the PyMC twins in
:mod:`benchmarks.hard.peers` can be checked term by term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_snf.examples.datasets import eight_schools


@dataclass
class HardCase:
    key: str
    kind: str  # what makes it hard: "modes", "ridge", "funnel", "scale", "correlation", "high-D"
    description: str
    model: Callable[..., Any]
    args: tuple
    sites: dict[str, tuple[int, ...]]  # latent site -> event shape (constrained), in model order
    reference: Callable[[], dict] = field(repr=False, default=lambda: {})

    @property
    def names(self) -> list[str]:
        out = []
        for name, shape in self.sites.items():
            n = math.prod(shape)
            out += [name] if shape == () else [f"{name}[{i}]" for i in range(n)]
        return out

    def flatten(self, samples: dict[str, Tensor]) -> Tensor:
        """``(N, P)`` float64 matrix of the scored coordinates from per-site draws ``(N, *shape)``."""
        cols = [samples[name].reshape(samples[name].shape[0], -1).double() for name in self.sites]
        return torch.cat(cols, -1)


# -- several modes ---------------------------------------------------------------------------------
def two_modes_model(y: Tensor) -> None:
    """``theta ~ N(0, 1)``, ``y_i ~ N(theta^2, 1)``, 20 points with mean 2.25: theta = +-1.5."""
    theta = pyro.sample("theta", dist.Normal(y.new_zeros(()), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta**2, 1.0), obs=y)


def two_modes_data() -> tuple[Tensor]:
    y = torch.randn(20, generator=torch.Generator().manual_seed(1))
    return (y - y.mean() + 2.25,)


def mixture_model(y: Tensor) -> None:
    """Label switching: ``mu ~ N(0, 3^2 I_2)``, ``y_i ~ 0.5 N(mu_1, 1) + 0.5 N(mu_2, 1)``; 40 points,
    half around -2, half around +2. Two symmetric modes (mu_1 < mu_2 and mu_1 > mu_2)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(2), 3.0).to_event(1))
    mix = dist.Categorical(logits=torch.zeros_like(mu))  # the last dim of mu: the components
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.MixtureSameFamily(mix, dist.Normal(mu, 1.0)), obs=y)


def mixture_data() -> tuple[Tensor]:
    g = torch.Generator().manual_seed(2)
    return (torch.cat([torch.randn(20, generator=g) - 2.0, torch.randn(20, generator=g) + 2.0]),)


# -- a curved ridge --------------------------------------------------------------------------------
def banana_model(y: Tensor) -> None:
    """``x ~ N(0, 3^2 I_2)``, ``y ~ N(x_2 + x_1^2, 0.1^2)`` with ``y = 1``: the mass lies on the
    parabola ``x_2 = 1 - x_1^2``, 0.1 wide and about 8 long."""
    x = pyro.sample("x", dist.Normal(y.new_zeros(2), 3.0).to_event(1))
    pyro.sample("y", dist.Normal(x[..., 1] + x[..., 0] ** 2, 0.1), obs=y)


# -- funnels ---------------------------------------------------------------------------------------
def funnel_model(y: Tensor) -> None:
    """Neal's funnel with data: ``v ~ N(0, 3^2)``, ``x_i ~ N(0, exp(v/2)^2)`` (9 of them),
    ``y_i ~ N(x_i, 1)``. The neck (v << 0) keeps most of the prior's mass."""
    v = pyro.sample("v", dist.Normal(y.new_zeros(()), 3.0))
    with pyro.plate("dims", len(y)):
        x = pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)))
        pyro.sample("y", dist.Normal(x, 1.0), obs=y)


def funnel_data() -> tuple[Tensor]:
    return (0.7 * torch.randn(9, generator=torch.Generator().manual_seed(3)),)


def eight_schools_centered(sigma: Tensor, y: Tensor) -> None:
    """Centred eight schools: ``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~ N(mu, tau^2)``,
    ``y_j ~ N(theta_j, sigma_j^2)``: a funnel in (log tau, theta)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_full((), 5.0)))
    with pyro.plate("schools", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def hierarchical_model(y: Tensor) -> None:
    """500 groups, centred: ``mu ~ N(0, 5^2)``, ``tau ~ HalfNormal(2)``, ``theta_j ~ N(mu, tau^2)``,
    ``y_jk ~ N(theta_j, 1)`` for k = 1, 2 (``y`` of shape (500, 2)); 502 latents."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(y.new_full((), 2.0)))
    with pyro.plate("groups", y.shape[0], dim=-1):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta.unsqueeze(-1), 1.0).to_event(1), obs=y)


def hierarchical_data() -> tuple[Tensor]:
    g = torch.Generator().manual_seed(4)
    theta = 1.0 + 0.6 * torch.randn(500, 1, generator=g)
    return (theta + torch.randn(500, 2, generator=g),)


# -- scale and correlation: conjugate normal-inverse-gamma regression --------------------------------
def regression_model(X: Tensor, y: Tensor, a0: float, b0: float, s0: Tensor) -> None:
    """``sigma2 ~ InverseGamma(a0, b0)``, ``beta ~ N(0, sigma2 diag(s0^2))``, ``y ~ N(X beta, sigma2)``."""
    sigma2 = pyro.sample("sigma2", dist.InverseGamma(a0, b0))
    scale = sigma2.sqrt()[..., None] * s0
    beta = pyro.sample("beta", dist.Normal(torch.zeros_like(s0), scale).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * beta).sum(-1), sigma2.sqrt()), obs=y)


def regression_data(design: str) -> tuple:
    g = torch.Generator().manual_seed(0)
    n = 50
    if design == "scale":  # slope sd 0.0089, sigma2 sd 0.70: 79x apart
        x = 28 * torch.randn(n, generator=g)
        x = x - x.mean()
    else:  # x in [4, 6]: corr(intercept, slope) = -0.993
        x = torch.linspace(4.0, 6.0, n)
    X = torch.stack([torch.ones(n), x], -1)
    y = 1 + 0.5 * x + 2 * torch.randn(n, generator=g)
    return X, y, 3.0, 3.0, torch.tensor([10.0, 10.0])


# -- a long latent series --------------------------------------------------------------------------
class StationaryAR1(dist.TorchDistribution):
    """``h_0 ~ N(mu, sigma^2 / (1 - phi^2))``, ``h_t ~ N(mu + phi (h_{t-1} - mu), sigma^2)``: a Gaussian
    AR(1) path of length ``T`` as one event (vectorised log-density; sampling loops over t)."""

    arg_constraints = {}
    support = dist.constraints.independent(dist.constraints.real, 1)

    def __init__(self, mu: Tensor, phi: Tensor, sigma: Tensor, T: int, validate_args: bool | None = None):
        self.mu, self.phi, self.sigma, self.T = mu, phi, sigma, T
        batch = torch.broadcast_shapes(mu.shape, phi.shape, sigma.shape)
        super().__init__(batch, torch.Size([T]), validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> StationaryAR1:
        b = torch.Size(batch_shape)
        return StationaryAR1(self.mu.expand(b), self.phi.expand(b), self.sigma.expand(b), self.T)

    def log_prob(self, h: Tensor) -> Tensor:
        mu, phi, sigma = (t.unsqueeze(-1) for t in (self.mu, self.phi, self.sigma))
        sd0 = sigma / torch.sqrt(1 - phi**2)
        lp0 = dist.Normal(mu[..., 0], sd0[..., 0]).log_prob(h[..., 0])
        mean = mu + phi * (h[..., :-1] - mu)
        return lp0 + dist.Normal(mean, sigma).log_prob(h[..., 1:]).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self.batch_shape if not sample_shape else torch.Size(sample_shape) + self.batch_shape
        mu, phi, sigma = (t.expand(shape) for t in (self.mu, self.phi, self.sigma))
        with torch.no_grad():
            h = [mu + sigma / torch.sqrt(1 - phi**2) * torch.randn_like(mu)]
            for _ in range(self.T - 1):
                h.append(mu + phi * (h[-1] - mu) + sigma * torch.randn_like(mu))
        return torch.stack(h, -1)


def stochastic_volatility_model(y: Tensor) -> None:
    """``mu ~ N(0, 2^2)``, ``phi ~ Uniform(-1, 1)``, ``sigma ~ HalfNormal(1)``, ``h`` a stationary
    Gaussian AR(1) path (:class:`StationaryAR1`), ``y_t ~ N(0, exp(h_t / 2)^2)``; T = 200: 203 latents."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 2.0))
    phi = pyro.sample("phi", dist.Uniform(y.new_full((), -1.0), 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(y.new_full((), 1.0)))
    h = pyro.sample("h", StationaryAR1(mu, phi, sigma, len(y)))
    pyro.sample("y", dist.Normal(0.0, torch.exp(h / 2)).to_event(1), obs=y)


def stochastic_volatility_data() -> tuple[Tensor]:
    """T = 200 from mu = -1, phi = 0.95, sigma = 0.25 (seed 5)."""
    torch.manual_seed(5)
    h = StationaryAR1(torch.tensor(-1.0), torch.tensor(0.95), torch.tensor(0.25), 200).sample()
    g = torch.Generator().manual_seed(6)
    return (torch.exp(h / 2) * torch.randn(200, generator=g),)


# Vectorisation: under Trace_ELBO(vectorize_particles=True) or sample_posterior a latent outside the
# plates has shape (P, 1, ...) when the model has one plate (the particle dim left of it), so it
# broadcasts against the plate's dim without unsqueezing; index event dims from the right.


def cases() -> list[HardCase]:
    """Every case, in report order (the references are computed lazily, on the first call)."""
    from benchmarks.hard import exact

    def stored_reference(key: str) -> dict:
        from benchmarks.hard.make_references import stored_reference as load

        return load(key)

    es = eight_schools(torch.float32)
    hier = hierarchical_data()
    return [
        HardCase(
            "two_modes",
            "modes",
            "theta^2 model, theta = +-1.5 equally likely",
            two_modes_model,
            two_modes_data(),
            {"theta": ()},
            lambda: exact.two_modes(*two_modes_data()),
        ),
        HardCase(
            "label_switching",
            "modes",
            "2-component mixture, exchangeable means (+-2)",
            mixture_model,
            mixture_data(),
            {"mu": (2,)},
            lambda: exact.mixture(*mixture_data()),
        ),
        HardCase(
            "banana",
            "ridge",
            "2-D curved ridge x2 = 1 - x1^2, width 0.1",
            banana_model,
            (torch.tensor(1.0),),
            {"x": (2,)},
            lambda: exact.banana(1.0),
        ),
        HardCase(
            "funnel",
            "funnel",
            "Neal's funnel (v, 9 x) with 9 noisy observations",
            funnel_model,
            funnel_data(),
            {"v": (), "x": (9,)},
            lambda: exact.funnel(*funnel_data()),
        ),
        HardCase(
            "eight_schools_centered",
            "funnel",
            "centred eight schools",
            eight_schools_centered,
            (es["sigma"], es["y"]),
            {"mu": (), "tau": (), "theta": (8,)},
            lambda: exact.eight_schools_centered(),
        ),
        HardCase(
            "regression_scale",
            "scale",
            "regression, coefficient sd 80x below the noise's",
            regression_model,
            regression_data("scale"),
            {"sigma2": (), "beta": (2,)},
            lambda: exact.regression(*regression_data("scale")),
        ),
        HardCase(
            "regression_corr",
            "correlation",
            "regression, corr(intercept, slope) = -0.993",
            regression_model,
            regression_data("corr"),
            {"sigma2": (), "beta": (2,)},
            lambda: exact.regression(*regression_data("corr")),
        ),
        HardCase(
            "hierarchical_500",
            "high-D",
            "500 groups, centred, 502 latents",
            hierarchical_model,
            hier,
            {"mu": (), "tau": (), "theta": (500,)},
            lambda: exact.hierarchical(*hierarchical_data()),
        ),
        HardCase(
            "stochastic_volatility",
            "high-D",
            "stochastic volatility, T = 200, 203 latents",
            stochastic_volatility_model,
            stochastic_volatility_data(),
            {"mu": (), "phi": (), "sigma": (), "h": (200,)},
            lambda: stored_reference("stochastic_volatility"),
        ),
    ]
