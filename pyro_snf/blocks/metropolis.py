"""Random-walk Metropolis block."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_snf.blocks.base import StochasticBlock
from pyro_snf.blocks.kernels import BlockStep, ChainState, Proposal, metropolis_hastings
from pyro_snf.energy import AnnealedEnergy


class MetropolisBlock(StochasticBlock):
    """Gaussian random-walk Metropolis steps targeting ``u_beta``.

    Proposal ``x' = x + step_size * xi``, ``xi ~ N(0, I)``, accepted with probability
    ``min(1, exp(u_beta(x) - u_beta(x')))``. The kernel is in detailed balance with
    ``exp(-u_beta)``, so the path term telescopes over the steps (rejections included):

    .. math::  \\Delta S = u_\\beta(y) - u_\\beta(x).

    Proposals with a non-finite energy are rejected and counted. A particle that enters with a
    non-finite energy stays where it is and gets ``dS = -inf``. The accept mask is a constant for
    gradients; gradients reach ``step_size`` through the accepted proposals (reparameterised).
    One energy evaluation per step.

    Example::

        >>> import torch
        >>> block = MetropolisBlock(step_size=0.5, num_steps=10)
        >>> y, dS = block.forward_step(torch.randn(100, 2), lambda x: 0.5 * (x ** 2).sum(-1))
        >>> y.shape, dS.shape, 0.0 < float(block.last_info.acceptance_rate) <= 1.0
        (torch.Size([100, 2]), torch.Size([100]), True)
    """

    metropolis_adjusted = True
    default_target_accept = 0.234

    def transition(self, x: Tensor, energy: AnnealedEnergy) -> BlockStep:
        step = self.step_size_like(x)

        def propose(state: ChainState) -> Proposal:
            proposal = state.x + step * torch.randn_like(state.x)
            u_prop = energy(proposal)
            return Proposal(proposal, u_prop, None, torch.isfinite(u_prop), state.u - u_prop)

        return metropolis_hastings(x, energy, self.num_steps, propose, with_force=False)
