"""Unadjusted underdamped Langevin block with auxiliary velocities."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_snf.blocks.base import StochasticBlock
from pyro_snf.blocks.kernels import BlockStep, energy_and_force, freeze_dead, unadjusted_result
from pyro_snf.energy import AnnealedEnergy, finite_rows


class UnderdampedLangevinBlock(StochasticBlock):
    """Underdamped (kinetic) Langevin dynamics, OBABO splitting, no accept test.

    A fresh velocity ``v ~ N(0, I)`` is drawn on entry and dropped on exit. Each step applies
    ``O`` (``v <- a v + sqrt(1 - a^2) xi`` with ``a = exp(-friction * eps / 2)``), then the
    velocity-Verlet ``B A B`` (``v -= eps/2 grad u_beta``; ``x += eps v``; ``v -= eps/2 grad u_beta``),
    then ``O`` again. ``BAB`` is volume preserving (log-det 0); each ``O`` step's noise ratio is
    ``(|v'|^2 - |v|^2) / 2``; the velocity draw on entry and the backward draw on exit add
    ``(|v_0|^2 - |v_K|^2) / 2``. Everything but the ``B`` kicks cancels:

    .. math::  \\Delta S = -\\sum_{B\\ \\text{kicks}} \\tfrac12\\left(\\lVert v_{\\rm after}\\rVert^2
               - \\lVert v_{\\rm before}\\rVert^2\\right),

    which tends to ``u_beta(y) - u_beta(x)`` as ``eps -> 0`` (energy conservation). The scheme is
    palindromic, so the block's own kernel serves as backward kernel with the velocity flipped.
    One energy+force evaluation per step. Particles with a non-finite energy or force are frozen
    and get ``dS = -inf``.

    :param friction: the friction coefficient ``gamma`` (> 0); large values approach overdamped
        dynamics, small ones Hamiltonian dynamics.

    Example::

        >>> import torch
        >>> block = UnderdampedLangevinBlock(step_size=0.1, num_steps=10, friction=1.0)
        >>> y, dS = block.forward_step(torch.randn(100, 2), lambda x: 0.5 * (x ** 2).sum(-1))
        >>> y.shape
        torch.Size([100, 2])
    """

    def __init__(self, step_size: float = 0.1, num_steps: int = 1, beta: float = 1.0, *,
                 friction: float = 1.0, **kwargs) -> None:
        super().__init__(step_size, num_steps, beta, **kwargs)
        if not float(friction) > 0:
            raise ValueError(f"friction must be > 0, got {friction}")
        self.friction = float(friction)

    def transition(self, x: Tensor, energy: AnnealedEnergy) -> BlockStep:
        eps = self.step_size_like(x)
        a = torch.exp(-self.friction * eps / 2)
        noise_scale = (1.0 - a * a).sqrt()
        u, g, dead = energy_and_force(x, energy)
        nonfinite = dead.long()
        v = torch.randn_like(x)
        dS = torch.zeros_like(u)

        def kick(v: Tensor, g: Tensor, dS: Tensor) -> tuple[Tensor, Tensor]:
            v_new = v - 0.5 * eps * g
            return v_new, dS - 0.5 * (v_new.pow(2).sum(-1) - v.pow(2).sum(-1))

        for _ in range(self.num_steps):
            v = a * v + noise_scale * torch.randn_like(x)
            v_half, dS_half = kick(v, g, dS)
            y = x + eps * v_half
            u_y, g_y = energy.value_and_grad(y)
            v_full, dS_full = kick(v_half, g_y, dS_half)
            dead, nonfinite, (x, g, v, dS) = freeze_dead(finite_rows(u_y, g_y), dead, nonfinite,
                                                         (x, g, v, dS), (y, g_y, v_full, dS_full))
            v = a * v + noise_scale * torch.randn_like(x)
        return unadjusted_result(x, dS, dead, nonfinite, self.num_steps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", friction={self.friction:.4g}"
