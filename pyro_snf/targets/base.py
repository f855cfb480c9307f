"""The target protocol: an energy ``u(x)`` (``-log`` of an unnormalised density), its ``log Z``
where known, and exact samples where they can be drawn."""

from __future__ import annotations

import torch
from torch import Tensor


class Target:
    """Base class of benchmark targets ``p(x) = exp(-u(x)) / Z`` on ``R^dim``.

    Subclasses implement :meth:`energy` (shape ``(..., dim) -> (...)``, following the input's
    device and dtype) and, where possible, :meth:`sample`. ``log_Z`` is ``None`` when unknown.
    A target is callable: ``target(x) == target.energy(x)``.
    """

    dim: int
    log_Z: float | None = None

    def energy(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} has dimension {self.dim}, got input of shape {tuple(x.shape)}"
            )
        return self.energy(x)

    def sample(self, num_samples: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
        """Exact samples, shape ``(num_samples, dim)``."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, log_Z={self.log_Z})"
