"""Metropolis-adjusted Langevin (MALA) block."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_snf.blocks.base import StochasticBlock
from pyro_snf.blocks.kernels import BlockStep, ChainState, Proposal, gaussian_log_ratio, metropolis_hastings
from pyro_snf.energy import AnnealedEnergy, finite_rows


class MALABlock(StochasticBlock):
    """Langevin proposals with the Metropolis-Hastings correction.

    Proposal ``x' = x - eps grad u_beta(x) + sqrt(2 eps) xi``, accepted with probability

    .. math::

        \\min\\left(1, \\exp\\big(u_\\beta(x) - u_\\beta(x')\\big)
        \\frac{q(x' \\to x)}{q(x \\to x')}\\right),

    where the Hastings ratio of the asymmetric proposal is included. The kernel is in detailed
    balance with ``exp(-u_beta)``, so ``dS = u_beta(y) - u_beta(x)``. One energy+force evaluation
    per step (the force of the accepted point is reused). Non-finite proposals are rejected and
    counted; a particle entering with a non-finite energy or force stays put with ``dS = -inf``.

    Example::

        >>> import torch
        >>> block = MALABlock(step_size=0.1, num_steps=10)
        >>> y, dS = block.forward_step(torch.randn(100, 2), lambda x: 0.5 * (x ** 2).sum(-1))
        >>> float(block.last_info.acceptance_rate) > 0.5
        True
    """

    metropolis_adjusted = True
    default_target_accept = 0.574

    def transition(self, x: Tensor, energy: AnnealedEnergy) -> BlockStep:
        eps = self.step_size_like(x)
        noise_scale = (2.0 * eps).sqrt()

        def propose(state: ChainState) -> Proposal:
            x, u, g = state.x, state.u, state.g
            proposal = x - eps * g + noise_scale * torch.randn_like(x)
            u_prop, g_prop = energy.value_and_grad(proposal)
            log_alpha = u - u_prop + gaussian_log_ratio(x, proposal, g, g_prop, eps)
            return Proposal(proposal, u_prop, g_prop, finite_rows(u_prop, g_prop), log_alpha)

        return metropolis_hastings(x, energy, self.num_steps, propose, with_force=True)
