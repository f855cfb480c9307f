"""The 40-mode Gaussian mixture of the FAB benchmark (pinned means)."""

from __future__ import annotations

import math
from importlib import resources

import torch
from torch import Tensor

from pyro_snf.targets.base import Target

#: Isotropic component standard deviation: ``softplus(1.0)``.
GMM40_STD = math.log1p(math.e)


def gmm40_means() -> Tensor:
    """The 40 pinned 2-D means (float64), shipped as ``targets/data/gmm40_means.csv``.

    Generated as in fab-torch: ``torch.manual_seed(0)``, ``(torch.rand(40, 2) - 0.5) * 2 * 40``.
    """
    text = resources.files("pyro_snf.targets").joinpath("data/gmm40_means.csv").read_text()
    rows = [line.split(",") for line in text.strip().splitlines()[1:]]
    return torch.tensor([[float(a), float(b)] for a, b in rows], dtype=torch.float64)


class GaussianMixture(Target):
    """Isotropic Gaussian mixture ``sum_k w_k N(mu_k, std^2 I)``; normalised, so ``log Z = 0``.

    :param means: ``(K, dim)`` component means.
    :param std: component standard deviation.
    :param weights: ``(K,)`` non-negative component weights (normalised here); default equal.

    Example::

        >>> target = GMM40()
        >>> target.dim, target.num_modes, target.log_Z
        (2, 40, 0.0)
    """

    log_Z = 0.0

    def __init__(self, means: Tensor, std: float, weights: Tensor | None = None) -> None:
        self.means = means.to(torch.float64)
        self.num_modes, self.dim = self.means.shape
        self.std = float(std)
        if weights is None:
            weights = torch.ones(self.num_modes, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (self.num_modes,) or not bool((weights >= 0).all()) or not weights.sum() > 0:
            raise ValueError(f"weights must be {self.num_modes} non-negative numbers with a positive sum, "
                             f"got shape {tuple(weights.shape)}")
        self.weights = weights / weights.sum()
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _params_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = (self.means.to(dtype=x.dtype, device=x.device),
                                self.weights.log().to(dtype=x.dtype, device=x.device))
        return self._cache[key]

    def energy(self, x: Tensor) -> Tensor:
        means, log_weights = self._params_like(x)
        log_comp = -0.5 * (x.unsqueeze(-2) - means).pow(2).sum(-1) / self.std**2 + log_weights
        log_norm = self.dim * math.log(self.std * math.sqrt(2 * math.pi))
        return -(torch.logsumexp(log_comp, dim=-1) - log_norm)

    def sample(self, num_samples: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
        means = self.means.to(dtype=dtype, device=device)
        if bool((self.weights == self.weights[0]).all()):
            idx = torch.randint(self.num_modes, (num_samples,), device=device)
        else:
            idx = torch.multinomial(self.weights.to(device), num_samples, replacement=True)
        return means[idx] + self.std * torch.randn(num_samples, self.dim, dtype=dtype, device=device)

    def mode_counts(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """(Weighted) mass assigned to each mode by nearest mean, shape ``(K,)``, summing to 1."""
        nearest = torch.cdist(x.to(torch.float64), self.means.to(x.device)).argmin(-1)
        w = torch.ones_like(nearest, dtype=torch.float64) if weights is None else weights.to(torch.float64)
        mass = torch.zeros(self.num_modes, dtype=torch.float64, device=x.device).index_add_(0, nearest, w)
        return mass / mass.sum()


class GMM40(GaussianMixture):
    """The pinned 40-mode mixture in 2-D (means in ``[-40, 40]^2``, std 1.31326)."""

    def __init__(self) -> None:
        super().__init__(gmm40_means(), GMM40_STD)
