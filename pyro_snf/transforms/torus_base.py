"""The base density of flows on :math:`\\mathbb{R}^a \\times \\mathbb{T}^b`: standard normal on the real
coordinates, uniform on the angles,

.. math::

    \\log q_0(x) = \\textstyle\\sum_{i\\ \\rm real} \\big(-\\tfrac12 x_i^2 - \\tfrac12 \\log 2\\pi\\big)
    - b \\log 2\\pi \\quad \\text{if every angle lies in } [-\\pi, \\pi], \\quad -\\infty \\text{ otherwise}.

The base energy :math:`-\\log q_0` is therefore ``+inf`` off the box, so a stochastic block annealing
from it rejects every proposal that leaves the box and the box is never left
(:class:`~pyro_snf.transforms.circular.CircularCoupling` maps the box onto itself).

Example::

    >>> import torch
    >>> base = TorusNormal(torch.tensor([False, True]))
    >>> x = base.rsample((5,))
    >>> x.shape, bool((x[:, 1].abs() <= torch.pi).all())
    (torch.Size([5, 2]), True)
    >>> float(base.log_prob(torch.tensor([0.0, 4.0])))
    -inf
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints


class TorusNormal(TorchDistribution):
    """Standard normal on the real coordinates and uniform on ``[-pi, pi]`` for the angles (module doc).

    :param periodic: boolean mask of shape ``(D,)``, ``True`` for the angles.
    :param dtype: dtype of the draws; ``device`` follows ``periodic``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, periodic: Tensor, dtype: torch.dtype = torch.float32, validate_args=None) -> None:
        periodic = torch.as_tensor(periodic)
        if periodic.dtype != torch.bool or periodic.ndim != 1 or periodic.numel() == 0:
            raise ValueError(f"periodic must be a non-empty 1-d boolean mask, got dtype {periodic.dtype} "
                             f"and shape {tuple(periodic.shape)}")
        self.periodic, self.dtype = periodic, dtype
        super().__init__(torch.Size(), torch.Size((periodic.numel(),)), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> TorusNormal:
        if torch.Size(batch_shape) != torch.Size():
            raise NotImplementedError("TorusNormal has no batch shape; draw sample_shape draws instead")
        return self

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        normal = torch.randn(shape, dtype=self.dtype, device=self.periodic.device)
        uniform = (2 * torch.rand(shape, dtype=self.dtype, device=self.periodic.device) - 1) * math.pi
        return torch.where(self.periodic, uniform, normal)

    def log_prob(self, value: Tensor) -> Tensor:
        periodic = self.periodic.to(value.device)
        real = torch.where(periodic, torch.zeros_like(value), value)
        inside = (value.abs() <= math.pi) | ~periodic
        n_real = int((~periodic).sum())
        log_q = (-0.5 * real.square().sum(-1) - 0.5 * n_real * math.log(2 * math.pi)
                 - (self.periodic.numel() - n_real) * math.log(2 * math.pi))
        return torch.where(inside.all(-1), log_q, torch.full_like(log_q, -math.inf))

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.event_shape, dtype=self.dtype, device=self.periodic.device)


__all__ = ["TorusNormal"]
