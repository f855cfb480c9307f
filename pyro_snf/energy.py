"""Annealed energies and their forces.

A stochastic block at annealing parameter ``beta`` targets

.. math::

    u_\\beta(x) = (1 - \\beta)\\, u_0(x) + \\beta\\, u(x),

where :math:`u_0 = -\\log q_0` is the base energy and :math:`u` the target energy (kT = 1).
:class:`AnnealedEnergy` evaluates it for a batch of particles in one call, and its force
:math:`\\nabla u_\\beta` by autograd, under :func:`torch.enable_grad` so that sampling inside
``torch.no_grad()`` (Pyro's ``Predictive``, ``psis_diagnostic``) still works.

Forces are differentiable (``create_graph=True``) when a graph is being recorded, ``detach_forces``
is off and ``x`` or ``beta`` require gradients (a force at a point that depends on no parameter
needs no graph; the energy value keeps its graph either way). With ``detach_forces=True`` the
force is treated as a constant in the backward pass: importance weights stay exact, but the
reverse-KL gradient drops the terms that flow through the force, i.e. it becomes a biased
(cheaper, lower-variance) gradient estimator.

Example::

    >>> import torch
    >>> energy = AnnealedEnergy(lambda x: (x ** 2).sum(-1), lambda x: 0.5 * (x ** 2).sum(-1), beta=0.5)
    >>> u, g = energy.value_and_grad(torch.ones(3, 2))
    >>> u.shape, g.shape
    (torch.Size([3]), torch.Size([3, 2]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Potential = Callable[[Tensor], Tensor]


def check_energy(u: Tensor, x: Tensor, name: str = "potential") -> Tensor:
    """Check that an energy evaluated at ``x`` (shape ``batch + (D,)``) has shape ``batch``."""
    if not isinstance(u, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(u).__name__}")
    if u.shape != x.shape[:-1]:
        raise ValueError(
            f"{name} returned shape {tuple(u.shape)} for input of shape {tuple(x.shape)}; expected "
            f"{tuple(x.shape[:-1])} (one energy per particle: reduce over the last, event, dimension)"
        )
    return u


class AnnealedEnergy:
    """``u_beta = (1 - beta) * base_potential + beta * potential`` with its force.

    :param potential: target energy ``u``, a callable mapping ``(..., D) -> (...)``.
    :param base_potential: base energy ``u_0``; only needed when ``beta`` can differ from 1.
    :param beta: annealing parameter, a float or a 0-d tensor (possibly requiring grad).
    :param detach_forces: treat forces as constants in the backward pass (see module doc).
    """

    def __init__(
        self,
        potential: Potential,
        base_potential: Potential | None,
        beta: float | Tensor = 1.0,
        detach_forces: bool = False,
    ) -> None:
        self.potential = potential
        self.base_potential = base_potential
        self.beta = beta
        self.detach_forces = detach_forces
        fixed = beta if isinstance(beta, float) else None
        if base_potential is None and fixed != 1.0:
            raise ValueError(
                "a block with beta != 1 (or a learnable beta) anneals from the base density and needs "
                "base_potential; use it inside StochasticNormalizingFlow, or pass base_potential="
            )
        self._only_target = fixed == 1.0
        self._only_base = fixed == 0.0

    def __call__(self, x: Tensor) -> Tensor:
        if self._only_target:
            return check_energy(self.potential(x), x)
        if self._only_base:
            return check_energy(self.base_potential(x), x, "base_potential")
        beta = self.beta
        u0 = check_energy(self.base_potential(x), x, "base_potential")
        u1 = check_energy(self.potential(x), x)
        return (1.0 - beta) * u0 + beta * u1

    def value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Energy (shape ``batch``) and force ``grad u`` (shape of ``x``) in one evaluation."""
        recording = torch.is_grad_enabled()
        beta_grad = isinstance(self.beta, Tensor) and self.beta.requires_grad
        with torch.enable_grad():
            xg = x if (recording and x.requires_grad) else x.detach().requires_grad_(True)
            u = self(xg)
            # a differentiable force is only needed when x or beta carry parameters' gradients
            create_graph = recording and not self.detach_forces and (x.requires_grad or beta_grad)
            (g,) = torch.autograd.grad(u.sum(), xg, create_graph=create_graph, retain_graph=recording)
        if not recording:
            return u.detach(), g.detach()
        return u, g


def finite_rows(u: Tensor, g: Tensor | None = None) -> Tensor:
    """Mask of particles whose energy (and force, if given) are finite."""
    ok = torch.isfinite(u)
    if g is not None:
        ok = ok & torch.isfinite(g).all(-1)
    return ok
