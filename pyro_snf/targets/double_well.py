"""The double well of Wu, Köhler & Noé (2020) and its many-well product."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_snf.targets.base import Target

#: ``log ∫ exp(-(x^4 - 6 x^2 - 0.5 x)) dx`` (adaptive quadrature, rel. tol. 1e-13).
LOG_Z_1D = 9.374541173869195
#: ``P(x1 < 0)`` under the double well: the mass of the shallower, left well.
LEFT_WELL_MASS = 0.15569290378886086


def double_well_x1_energy(x1: Tensor) -> Tensor:
    """The coupled coordinate's energy ``x1^4 - 6 x1^2 - 0.5 x1``."""
    return x1.pow(4) - 6.0 * x1.pow(2) - 0.5 * x1


def _sample_x1(num_samples: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """Exact draws of x1 by inverting the CDF tabulated on a fine float64 grid."""
    grid = torch.linspace(-4.0, 4.0, 200_001, dtype=torch.float64)
    density = torch.exp(-double_well_x1_energy(grid) - LOG_Z_1D)
    cdf = torch.cumulative_trapezoid(density, grid)
    cdf = torch.cat([cdf.new_zeros(1), cdf]) / cdf[-1]
    u = torch.rand(num_samples, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u).clamp(1, grid.numel() - 1)
    c0, c1 = cdf[idx - 1], cdf[idx]
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0.0, 1.0)
    x1 = grid[idx - 1] + frac * (grid[idx] - grid[idx - 1])
    return x1.to(dtype=dtype, device=device)


class DoubleWell(Target):
    """``u(x) = x1^4 - 6 x1^2 - 0.5 x1 + 0.5 x2^2`` on ``R^2``; ``log Z = 10.293480``.

    Two wells along ``x1`` (the left one holds mass 0.1557) separated by a barrier of about
    10 kT, a standard normal along ``x2``.

    Example::

        >>> import torch
        >>> target = DoubleWell()
        >>> x = target.sample(100_000)
        >>> abs(float((x[:, 0] < 0).float().mean()) - LEFT_WELL_MASS) < 0.01
        True
    """

    dim = 2
    log_Z = LOG_Z_1D + 0.5 * math.log(2 * math.pi)

    def energy(self, x: Tensor) -> Tensor:
        return double_well_x1_energy(x[..., 0]) + 0.5 * x[..., 1].pow(2)

    def sample(self, num_samples: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
        x1 = _sample_x1(num_samples, dtype, device)
        x2 = torch.randn(num_samples, dtype=dtype, device=device)
        return torch.stack([x1, x2], dim=-1)


class ManyWell(Target):
    """Product of ``dim / 2`` independent double wells: ``2^(dim/2)`` modes.

    ``u(x) = sum_i u_DW(x_{2i}, x_{2i+1})`` and ``log Z = dim / 2 * 10.293480``.

    Example::

        >>> target = ManyWell(8)
        >>> target.sample(5).shape, round(target.log_Z, 4)
        (torch.Size([5, 8]), 41.1739)
    """

    def __init__(self, dim: int = 32) -> None:
        if dim < 2 or dim % 2:
            raise ValueError(f"ManyWell needs an even dimension >= 2, got {dim}")
        self.dim = dim
        self.log_Z = dim // 2 * DoubleWell.log_Z
        self._pair = DoubleWell()

    def energy(self, x: Tensor) -> Tensor:
        pairs = x.reshape(*x.shape[:-1], self.dim // 2, 2)
        return self._pair.energy(pairs).sum(-1)

    def sample(self, num_samples: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
        draws = self._pair.sample(num_samples * (self.dim // 2), dtype=dtype, device=device)
        return draws.reshape(num_samples, self.dim)
