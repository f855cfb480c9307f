"""Shared parts of the blocks' kernels: the Metropolis-Hastings chain and the frozen dead particles.

Each block file holds only its proposal or integrator; the bookkeeping is assembled from here:

- :func:`metropolis_hastings` runs a Metropolis-Hastings chain from a block's ``propose`` function
  (one :class:`Proposal` per step: the proposed point, its energy and force, the ``ok`` mask and
  the log acceptance ratio) and returns ``(y, dS, info)`` with ``dS = u_beta(y) - u_beta(x)``;
  :func:`mh_update` is its accept step;
- :func:`freeze_dead` and :func:`unadjusted_result` do the same for unadjusted dynamics, which
  accept every move and freeze a particle (``dS = -inf``) once its energy or force is non-finite.

All of it is vectorised over particles and never syncs with the host. Random numbers are drawn in
the order proposal noise, energy, then (:func:`mh_update`) the uniform of the accept test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_snf.energy import AnnealedEnergy, finite_rows


class BlockInfo(NamedTuple):
    """Statistics of one block call (0-d tensors; read them with ``float()``/``int()``).

    ``acceptance_rate``: fraction of accepted proposals (1 for unadjusted dynamics);
    ``num_nonfinite``: proposals or states whose energy or force was NaN/inf (rejected, or
    for unadjusted dynamics the particle is frozen);
    ``num_dead``: particles whose path term is ``-inf`` (zero importance weight).
    """

    acceptance_rate: Tensor
    num_nonfinite: Tensor
    num_dead: Tensor


class BlockStep(NamedTuple):
    """One block call: the new state ``y``, the path term ``dS`` and the call's :class:`BlockInfo`."""

    y: Tensor
    dS: Tensor
    info: BlockInfo


class ChainState(NamedTuple):
    """State of a Metropolis-Hastings chain: position ``x``, energy ``u``, force ``g`` (None for
    gradient-free kernels) and per-particle counts of ``accepted`` and ``nonfinite`` proposals."""

    x: Tensor
    u: Tensor
    g: Tensor | None
    accepted: Tensor
    nonfinite: Tensor


class Proposal(NamedTuple):
    """A proposed move: point ``x``, energy ``u``, force ``g`` (or None), the mask ``ok`` of
    proposals whose energy (and force) are finite, and the log acceptance ratio ``log_alpha``
    (``u_beta(x) - u_beta(x')`` plus the Hastings correction, or ``H(x, p) - H(x', p')`` for HMC)."""

    x: Tensor
    u: Tensor
    g: Tensor | None
    ok: Tensor
    log_alpha: Tensor


def where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` where ``mask`` (shape ``batch``) else ``b`` (shape ``batch + (D,)``)."""
    return torch.where(mask.unsqueeze(-1), a, b)


def kill(dS: Tensor, dead: Tensor) -> Tensor:
    """Path term ``-inf`` (weight zero) for dead particles, never NaN."""
    return torch.where(dead, torch.full_like(dS, -float("inf")), dS)


def make_info(accepted: Tensor, nonfinite: Tensor, dead: Tensor, num_proposals: int,
              dtype: torch.dtype) -> BlockInfo:
    """Build a :class:`BlockInfo` from per-particle counts without a host sync; the acceptance
    rate has the floating ``dtype`` of the particles."""
    n = max(dead.numel(), 1) * num_proposals
    return BlockInfo(
        acceptance_rate=accepted.sum().to(dtype) / n,
        num_nonfinite=nonfinite.sum(),
        num_dead=dead.sum(),
    )


def log_uniform_like(u: Tensor) -> Tensor:
    """``log U`` with ``U ~ Uniform(0, 1)`` per particle, on ``u``'s device and dtype."""
    return torch.rand_like(u, dtype=u.dtype).log()


def gaussian_log_ratio(x: Tensor, y: Tensor, g_x: Tensor, g_y: Tensor, eps: Tensor) -> Tensor:
    """``log q(y -> x) - log q(x -> y)`` for the Langevin proposal ``N(x - eps g_x, 2 eps I)``."""
    fwd = (y - x + eps * g_x).pow(2).sum(-1)
    bwd = (x - y + eps * g_y).pow(2).sum(-1)
    return (fwd - bwd) / (4.0 * eps)


def energy_and_force(x: Tensor, energy: AnnealedEnergy) -> tuple[Tensor, Tensor, Tensor]:
    """``(u, g, dead)`` at the entry point: energy, force and the mask of non-finite particles."""
    u, g = energy.value_and_grad(x)
    return u, g, ~finite_rows(u, g)


# -- Metropolis-Hastings -----------------------------------------------------------------------------


def mh_update(state: ChainState, proposal: Proposal, dead: Tensor) -> ChainState:
    """The accept step: draw ``log U`` per particle and move where ``ok``, not ``dead`` and
    ``log U < log_alpha``; count accepted and non-finite proposals."""
    accept = proposal.ok & ~dead & (log_uniform_like(state.u) < proposal.log_alpha)
    return ChainState(
        x=where_rows(accept, proposal.x, state.x),
        u=torch.where(accept, proposal.u, state.u),
        g=None if state.g is None else where_rows(accept, proposal.g, state.g),
        accepted=state.accepted + accept,
        nonfinite=state.nonfinite + ~proposal.ok,
    )


def metropolis_hastings(x: Tensor, energy: AnnealedEnergy, num_steps: int,
                        propose: Callable[[ChainState], Proposal], *, with_force: bool) -> BlockStep:
    """Run ``num_steps`` Metropolis-Hastings steps from ``x`` with the block's ``propose``.

    The kernel is in detailed balance with ``exp(-u_beta)``, so the path term telescopes over the
    steps: ``dS = u_beta(y) - u_beta(x)``. A particle entering with a non-finite energy (or force,
    ``with_force``) is dead: it stays put with ``dS = -inf``.
    """
    if with_force:
        u, g, dead = energy_and_force(x, energy)
    else:
        u, g = energy(x), None
        dead = ~torch.isfinite(u)
    u_in = u
    state = ChainState(x, u, g, torch.zeros_like(dead, dtype=torch.long), dead.long())
    for _ in range(num_steps):
        state = mh_update(state, propose(state), dead)
    info = make_info(state.accepted, state.nonfinite, dead, num_steps, state.x.dtype)
    return BlockStep(state.x, kill(state.u - u_in, dead), info)


# -- unadjusted dynamics ---------------------------------------------------------------------------


def freeze_dead(ok: Tensor, dead: Tensor, nonfinite: Tensor, old: Sequence[Tensor],
                new: Sequence[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
    """After a move of unadjusted dynamics: particles not ``ok`` die; the dead keep their ``old``
    values, the others take the ``new`` ones (per-particle tensors or rows). Returns
    ``(dead, nonfinite, values)``; ``nonfinite`` counts the particles that died in this move."""
    nonfinite = nonfinite + (~ok & ~dead)
    dead = dead | ~ok
    values = [torch.where(dead, a, b) if a.dim() == dead.dim() else where_rows(dead, a, b)
              for a, b in zip(old, new)]
    return dead, nonfinite, values


def unadjusted_result(x: Tensor, dS: Tensor, dead: Tensor, nonfinite: Tensor, num_steps: int) -> BlockStep:
    """``(y, dS, info)`` of unadjusted dynamics: every move accepted, dead particles ``dS = -inf``."""
    info = make_info(torch.full_like(nonfinite, num_steps), nonfinite, dead, num_steps, x.dtype)
    return BlockStep(x, kill(dS, dead), info)
