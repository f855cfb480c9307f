"""Pyro SVI over the ranks of a process group: ``AutoSNF``, ``AmortizedSNF`` or any guide.

Pyro's own pattern for data-parallel SVI (``pyro.optim.HorovodOptimizer``) averages each parameter's
gradient over workers before the optimiser step; :class:`DataParallelSVI` does the same with
``torch.distributed`` all-reduces (coalesced, parameters in name order, :func:`average_gradients`). With
``reduce="mean"`` the step follows the gradient of the mean of the ranks' ELBO losses, right when each
rank's loss estimates the same objective: particles sharded (``num_particles`` per rank), or a
subsampling data plate whose ``N / B_r`` scale makes each rank's loss unbiased. With ``reduce="sum"`` the
gradients and losses are summed: each rank holds its own part of the data (an unscaled plate over its
rows), the global loss being the sum over all rows. Adapted step sizes follow the block acceptance
averaged over ranks, once per step (:mod:`pyro_snf.distributed.training`), identical everywhere.

Per-shard model arguments: in a real job every rank passes its own arguments; for
:class:`~pyro_snf.distributed.sharding.EmulatedShards`, wrap an argument in :class:`PerShard` (one value
per shard). :meth:`DataParallelSVI.initialize` creates the parameters under one seed, copies rank 0's
values everywhere and starts the per-rank streams.

Example (emulated, two shards, AutoSNF)::

    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro.infer import Trace_ELBO
    >>> from pyro_snf.infer import AutoSNF
    >>> from pyro_snf.distributed.sharding import EmulatedShards
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> pyro.clear_param_store()
    >>> guide = AutoSNF(model, num_blocks=1)
    >>> svi = DataParallelSVI(model, guide, pyro.optim.Adam({"lr": 0.05}),
    ...                       Trace_ELBO(2, vectorize_particles=True), adapt_step_sizes=True,
    ...                       shards=EmulatedShards(seed=0, world_size=2))
    >>> svi.initialize(torch.ones(4), seed=0)
    >>> losses = [svi.step(torch.ones(4)) for _ in range(3)]
    >>> len(losses), guide.blocks[0].step_size != 0.5
    (3, tensor(True))
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.infer.util import zero_grads
from pyro.optim import PyroOptim
from torch import Tensor, nn

from pyro_snf.blocks import StochasticBlock
from pyro_snf.distributed.sharding import EmulatedShards, ProcessGroupShards, check_same_across_ranks
from pyro_snf.distributed.training import (
    Shards,
    adapt_step_sizes_from,
    adaptive_blocks,
    average_gradients,
    broadcast_state,
    check_not_adapting,
    local_acceptance,
)

__all__ = ["DataParallelSVI", "PerShard"]


@dataclass(frozen=True)
class PerShard:
    """A model argument with one value per shard (only for emulated shards)."""

    values: Sequence[Any]


class DataParallelSVI:
    """``pyro.infer.SVI`` whose gradient step averages (or sums) gradients over ranks.

    :param model: the Pyro model; ``guide``: its guide; ``optim``: a Pyro optimiser; ``loss``: an ELBO.
    :param reduce: ``"mean"`` (sharded particles / scaled subsamples) or ``"sum"`` (sharded data rows).
    :param adapt_step_sizes: adapt the step sizes of the guide's adaptive blocks (``guide.blocks`` or
        ``blocks=``) to the acceptance averaged over ranks, once per step. Do not also use ``adapting()``.
    :param shards: default: the ranks of the initialised default process group.
    """

    def __init__(self, model: Callable[..., Any], guide: Callable[..., Any], optim: PyroOptim, loss: ELBO,
                 *, reduce: str = "mean", adapt_step_sizes: bool = False,
                 blocks: Sequence[StochasticBlock] | None = None, shards: Shards | None = None) -> None:
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        self.model, self.guide, self.optim, self.loss = model, guide, optim, loss
        self.reduce = reduce
        self.shards = shards or ProcessGroupShards(None, "DataParallelSVI", "pyro.infer.SVI")
        self._all_blocks = list(getattr(guide, "blocks", []) if blocks is None else blocks)
        self.blocks = adaptive_blocks(self._all_blocks) if adapt_step_sizes else []
        if adapt_step_sizes and not self.blocks:
            raise ValueError("adapt_step_sizes=True but no block adapts its step size (pass blocks=)")

    def _args(self, k: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if any(isinstance(a, PerShard) for a in (*args, *kwargs.values())) and not isinstance(
                self.shards, EmulatedShards):
            raise TypeError("PerShard arguments are for EmulatedShards; under a process group pass each "
                            "rank's own arguments")

        def pick(a: Any) -> Any:
            return a.values[k] if isinstance(a, PerShard) else a

        return tuple(pick(a) for a in args), {n: pick(a) for n, a in kwargs.items()}

    def initialize(self, *args: Any, seed: int, **kwargs: Any) -> None:
        """Create the model's and guide's parameters under ``pyro.set_rng_seed(seed)`` (one loss
        evaluation, no gradient, on the first shard's arguments), broadcast rank 0's values, then seed
        each rank's stream with ``shard_seed(seed, rank)``."""
        a, kw = self._args(self.shards.shard_ids[0], args, kwargs)
        pyro.set_rng_seed(int(seed))
        with torch.no_grad():
            self.loss.loss(self.model, self.guide, *a, **kw)
        if isinstance(self.shards, ProcessGroupShards):
            broadcast_state(self.guide if isinstance(self.guide, nn.Module) else None)
        self.shards.seed(int(seed))

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One optimiser step on the global loss; returns it (mean or sum over ranks, same on every rank)."""
        shards = self.shards
        check_not_adapting(self._all_blocks)
        params: dict[str, Tensor] = {}
        stats = torch.zeros(1 + len(self.blocks), dtype=torch.float64)
        for k in shards.shard_ids:
            a, kw = self._args(k, args, kwargs)
            with shards.shard(k), poutine.trace(param_only=True) as capture:
                loss = self.loss.loss_and_grads(self.model, self.guide, *a, **kw)
            params.update({name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()})
            stats += torch.cat([torch.as_tensor(float(loss), dtype=torch.float64).reshape(1),
                                local_acceptance(self.blocks)])
        names = sorted(params)
        if isinstance(shards, ProcessGroupShards):
            check_same_across_ranks(hashlib.sha256(repr(names).encode()).hexdigest()[:16],
                                    "the set of parameters a step touches (hash of their names)",
                                    "every rank must run the same model and guide (same sites)")
        ordered = [params[n] for n in names]
        average_gradients(ordered, shards, mean=self.reduce == "mean")
        shards.allreduce_sum(stats)
        if self.reduce == "mean":
            stats[0] /= shards.world_size
        stats[1:] /= shards.world_size
        self.optim(set(ordered))
        zero_grads(set(ordered))
        if self.blocks:
            adapt_step_sizes_from(self.blocks, stats[1:])
        return float(stats[0])
