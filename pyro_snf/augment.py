"""Training data augmented by a kernel that leaves the target invariant.

Maximum likelihood on a finite set of target samples overfits: the flow piles density onto the
training points and thins it between them, which the held-out loss and the importance weights show
long before the training loss does. If ``x ~ p`` and ``K`` is a Markov kernel with ``pK = p`` (any
Metropolis-adjusted block at ``beta = 1`` on ``p``'s energy), then ``K^k x ~ p`` for every ``k``: runs
from the data are again exact samples of ``p``, one per data point and snapshot. The pool

.. math::  \\{x_i\\} \\cup \\{K^{s} x_i\\} \\cup \\{K^{2s} x_i\\} \\cup \\dots

is distributed as ``p`` row by row, with new points between the old ones (rows of one chain are
correlated, so the pool is worth fewer than its size in independent draws). Nothing here needs the
data to be independent; it does need them to be samples of ``p`` itself. Data from another density
(another temperature, another force field, a biased simulation) are moved toward ``p``, and the pool
then mixes the two: reweight or regenerate such data instead.

On alanine dipeptide (8,000 MD frames at 1000 K; snapshots 50 Metropolis steps of 0.1 apart, acceptance
0.27-0.28, 10-13 s per snapshot on one core) the held-out ML loss of a circular flow stopped rising. On the
frames alone it was lowest at iteration 250 (68.4) and reached 77.2 at 1,000; on a pool with 4 snapshots
per frame it stayed within 67.7-68.2 from iteration 400 to 1,000, and with 8 it reached 67.5 at
iteration 700 (``benchmarks/ALA2_RESULTS.md``).

Example::

    >>> import torch
    >>> from pyro_snf.blocks import MetropolisBlock
    >>> from pyro_snf.targets import DoubleWell
    >>> target = DoubleWell()
    >>> data = target.sample(100)
    >>> pool = mcmc_augment(data, target, MetropolisBlock(step_size=0.5, num_steps=10), num_snapshots=3)
    >>> pool.shape, bool((pool[:100] == data).all())
    (torch.Size([400, 2]), True)

References: Metropolis, Rosenbluth, Rosenbluth, Teller & Teller (1953) and Hastings (1970), for the
invariance of a Metropolis-Hastings kernel.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from pyro_snf.blocks.base import StochasticBlock
from pyro_snf.energy import Potential

#: below this mean acceptance rate the pool is mostly copies of the data (the step is too large)
LOW_ACCEPTANCE = 0.02


def mcmc_augment(data: Tensor, potential: Potential, block: StochasticBlock, num_snapshots: int = 4,
                 chunk_size: int | None = None) -> Tensor:
    """Return ``data`` followed by ``num_snapshots`` snapshots of a chain run from every row of it.

    :param data: samples of ``exp(-potential)``, shape ``(N, D)``.
    :param potential: the target's energy, ``(..., D) -> (...)``.
    :param block: a Metropolis-adjusted block (``MetropolisBlock``, ``MALABlock``, ``HMCBlock``) at
        ``beta = 1``; each snapshot is ``block.num_steps`` steps after the previous one.
    :param num_snapshots: snapshots per data row (>= 1).
    :param chunk_size: rows per call (default all), to bound memory.
    :returns: the pool, shape ``((1 + num_snapshots) N, D)``: rows ``k N .. (k + 1) N - 1`` are snapshot
        ``k`` of rows ``0 .. N - 1`` (snapshot 0 is ``data`` itself).
    :raises ValueError: for a block that is not Metropolis-adjusted (an unadjusted Langevin step does
        not leave ``p`` invariant), one at ``beta != 1``, ``num_snapshots < 1``, data not of shape
        ``(N, D)``, or data where ``potential`` is not finite (they are not samples of ``p``).
    """
    name = type(block).__name__
    if not block.metropolis_adjusted:
        raise ValueError(f"{name} has no Metropolis test, so it does not leave the target invariant and its "
                         "runs are not samples of it: use MetropolisBlock, MALABlock or HMCBlock")
    if float(block.beta) != 1.0:
        raise ValueError(f"{name} targets (1 - beta) u_0 + beta u with beta = {float(block.beta):.3g}; "
                         "augmentation needs the target itself: construct the block with beta=1.0")
    if int(num_snapshots) < 1:
        raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
    if data.dim() != 2 or len(data) == 0:
        raise ValueError(f"data must have shape (N, D) with N >= 1, got {tuple(data.shape)}")
    chunk = len(data) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    snapshots: list[list[Tensor]] = [[] for _ in range(num_snapshots)]
    accepted = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            x = data[start:start + chunk]
            bad = ~torch.isfinite(potential(x))
            if bad.any():
                first = start + int(bad.nonzero()[0])
                raise ValueError(f"{int(bad.sum())} data rows (the first is row {first}) have a non-finite "
                                 "energy: they are not samples of this target")
            for k in range(num_snapshots):
                x, _ = block.forward_step(x, potential)
                snapshots[k].append(x)
                accepted = accepted + block.last_info.acceptance_rate.double().cpu() * len(x)
    rate = float(accepted) / (num_snapshots * len(data))
    if rate < LOW_ACCEPTANCE:
        warnings.warn(f"mcmc_augment: mean acceptance rate {rate:.3f}: the pool is mostly copies of the "
                      f"data; lower {name}'s step_size", stacklevel=2)
    return torch.cat([data, *(torch.cat(s) for s in snapshots)])


__all__ = ["mcmc_augment"]
