"""Neal's funnel."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_snf.targets.base import Target


class NealFunnel(Target):
    """``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)`` for ``i = 1..dim-1``; normalised, ``log Z = 0``.

    The first coordinate is ``v``. The neck (``v`` very negative) is the hard part.

    Example::

        >>> import torch
        >>> target = NealFunnel(10)
        >>> x = target.sample(4)
        >>> target(x).shape
        torch.Size([4])
    """

    log_Z = 0.0

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        if dim < 2:
            raise ValueError(f"NealFunnel needs dim >= 2, got {dim}")
        self.dim = dim
        self.scale = float(scale)

    def energy(self, x: Tensor) -> Tensor:
        v, rest = x[..., 0], x[..., 1:]
        n = self.dim - 1
        u_v = 0.5 * (v / self.scale).pow(2) + math.log(self.scale) + 0.5 * math.log(2 * math.pi)
        u_rest = 0.5 * rest.pow(2).sum(-1) * torch.exp(-v) + 0.5 * n * v + 0.5 * n * math.log(2 * math.pi)
        return u_v + u_rest

    def sample(self, num_samples: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
        v = self.scale * torch.randn(num_samples, 1, dtype=dtype, device=device)
        rest = torch.randn(num_samples, self.dim - 1, dtype=dtype, device=device) * torch.exp(0.5 * v)
        return torch.cat([v, rest], dim=-1)
