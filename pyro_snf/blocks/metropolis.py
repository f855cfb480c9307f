"""Random-walk Metropolis block."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_snf.blocks.base import BlockInfo, StochasticBlock, kill, log_uniform_like, make_info, where_rows
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

    default_target_accept = 0.234

    def transition(self, x: Tensor, energy: AnnealedEnergy) -> tuple[Tensor, Tensor, BlockInfo]:
        step = self.step_size_like(x)
        u = energy(x)
        u_in = u
        dead = ~torch.isfinite(u)
        accepted = torch.zeros_like(dead, dtype=torch.long)
        nonfinite = dead.long()
        for _ in range(self.num_steps):
            proposal = x + step * torch.randn_like(x)
            u_prop = energy(proposal)
            finite = torch.isfinite(u_prop)
            accept = finite & ~dead & (log_uniform_like(u) < u - u_prop)
            x = where_rows(accept, proposal, x)
            u = torch.where(accept, u_prop, u)
            accepted = accepted + accept
            nonfinite = nonfinite + ~finite
        dS = kill(u - u_in, dead)
        return x, dS, make_info(accepted, nonfinite, dead, self.num_steps, x.dtype)
