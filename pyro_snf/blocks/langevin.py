"""Unadjusted overdamped Langevin block."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_snf.blocks.base import StochasticBlock
from pyro_snf.blocks.kernels import BlockStep, energy_and_force, freeze_dead, unadjusted_result
from pyro_snf.energy import AnnealedEnergy, finite_rows


class LangevinBlock(StochasticBlock):
    """Unadjusted overdamped Langevin steps (no accept test), with the exact noise ratio.

    One step with ``eps = step_size``:

    .. math::

        y = x - \\epsilon \\nabla u_\\beta(x) + \\sqrt{2\\epsilon}\\, \\xi, \\qquad
        \\tilde\\xi = \\frac{x - y + \\epsilon \\nabla u_\\beta(y)}{\\sqrt{2\\epsilon}}, \\qquad
        \\Delta S = \\tfrac12 \\left(\\lVert\\xi\\rVert^2 - \\lVert\\tilde\\xi\\rVert^2\\right),

    where :math:`\\tilde\\xi` is the noise the same step would need to go back from ``y`` to ``x``.
    The chain does not leave ``exp(-u_beta)`` invariant (discretisation bias), but the weights stay
    exact. One energy+force evaluation per step (the force at the new point is reused). A particle
    whose energy or force becomes non-finite is frozen and gets ``dS = -inf``.

    Example::

        >>> import torch
        >>> block = LangevinBlock(step_size=0.05, num_steps=5)
        >>> y, dS = block.forward_step(torch.randn(100, 2), lambda x: 0.5 * (x ** 2).sum(-1))
        >>> bool(torch.isfinite(dS).all())
        True
    """

    def transition(self, x: Tensor, energy: AnnealedEnergy) -> BlockStep:
        eps = self.step_size_like(x)
        noise_scale = (2.0 * eps).sqrt()
        u, g, dead = energy_and_force(x, energy)
        nonfinite = dead.long()
        dS = torch.zeros_like(u)
        for _ in range(self.num_steps):
            xi = torch.randn_like(x)
            y = x - eps * g + noise_scale * xi
            u_y, g_y = energy.value_and_grad(y)
            xi_back = (x - y + eps * g_y) / noise_scale
            dS = dS + 0.5 * (xi.pow(2).sum(-1) - xi_back.pow(2).sum(-1))
            dead, nonfinite, (x, g) = freeze_dead(finite_rows(u_y, g_y), dead, nonfinite, (x, g), (y, g_y))
        return unadjusted_result(x, dS, dead, nonfinite, self.num_steps)


