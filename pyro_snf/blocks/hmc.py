"""Hamiltonian Monte Carlo block."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_snf.blocks.base import StochasticBlock
from pyro_snf.blocks.kernels import BlockStep, ChainState, Proposal, metropolis_hastings
from pyro_snf.energy import AnnealedEnergy, finite_rows


class HMCBlock(StochasticBlock):
    """HMC steps: momentum refresh ``p ~ N(0, I)``, leapfrog, Metropolis accept on the Hamiltonian.

    Each of the ``num_steps`` iterations runs ``num_leapfrog_steps`` leapfrog steps of size
    ``step_size`` and accepts with probability ``min(1, exp(H(x, p) - H(x', p')))``,
    ``H = u_beta + |p|^2 / 2``. The kernel on ``x`` is in detailed balance with ``exp(-u_beta)``,
    so ``dS = u_beta(y) - u_beta(x)``. ``num_leapfrog_steps`` energy+force evaluations per
    iteration (the force at the current point is carried over). Non-finite trajectories are
    rejected and counted.

    :param num_leapfrog_steps: leapfrog steps per HMC iteration (>= 1).

    Example::

        >>> import torch
        >>> block = HMCBlock(step_size=0.3, num_steps=5, num_leapfrog_steps=5)
        >>> y, dS = block.forward_step(torch.randn(100, 2), lambda x: 0.5 * (x ** 2).sum(-1))
        >>> float(block.last_info.acceptance_rate) > 0.8
        True
    """

    metropolis_adjusted = True
    default_target_accept = 0.651

    def __init__(self, step_size: float = 0.1, num_steps: int = 1, beta: float = 1.0, *,
                 num_leapfrog_steps: int = 5, **kwargs) -> None:
        super().__init__(step_size, num_steps, beta, **kwargs)
        if int(num_leapfrog_steps) != num_leapfrog_steps or num_leapfrog_steps < 1:
            raise ValueError(f"num_leapfrog_steps must be an integer >= 1, got {num_leapfrog_steps}")
        self.num_leapfrog_steps = int(num_leapfrog_steps)

    def transition(self, x: Tensor, energy: AnnealedEnergy) -> BlockStep:
        eps = self.step_size_like(x)

        def propose(state: ChainState) -> Proposal:
            p = torch.randn_like(state.x)
            h_start = state.u + 0.5 * p.pow(2).sum(-1)
            x_new, u_new, g_new = state.x, state.u, state.g
            p = p - 0.5 * eps * g_new
            for leap in range(self.num_leapfrog_steps):
                x_new = x_new + eps * p
                u_new, g_new = energy.value_and_grad(x_new)
                last = leap == self.num_leapfrog_steps - 1
                p = p - (0.5 if last else 1.0) * eps * g_new
            ok = finite_rows(u_new, g_new) & torch.isfinite(p).all(-1)
            h_end = u_new + 0.5 * p.pow(2).sum(-1)
            return Proposal(x_new, u_new, g_new, ok, h_start - h_end)

        return metropolis_hastings(x, energy, self.num_steps, propose, with_force=True)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_leapfrog_steps={self.num_leapfrog_steps}"
