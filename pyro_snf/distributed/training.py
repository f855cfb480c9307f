"""Data-parallel training: gradients averaged over ranks, step sizes adapted to the pooled acceptance.

Each of ``W`` ranks computes the loss of its shard of the global batch (``B / W`` particles, from its own
seed stream, :mod:`~pyro_snf.distributed.sharding`) and back-propagates; the gradients are then summed
over ranks by one all-reduce (per dtype, coalesced, parameter order fixed) and divided by ``W``:

.. math::

    g = \\frac1W \\sum_{r=0}^{W-1} \\nabla J_r, \\qquad
    J_r = \\frac{1}{B/W} \\sum_{i \\in r} \\ell_i \\;\\Rightarrow\\; g = \\nabla \\frac1B \\sum_i \\ell_i ,

the gradient of the global-batch loss (what ``DistributedDataParallel`` computes; done here by hand because
an SNF is not one module's ``forward``). Every rank then takes the same optimiser step from the same
gradient, so the parameters stay identical without any broadcast after the first
(:func:`broadcast_state`). Adaptive step sizes (``adapt_step_sizes=True``): after the step, each block's
acceptance rate of its last call, averaged over ranks by the same all-reduce, moves its step size,
``log eps += adapt_rate * (mean_r acc_r - target_accept)``: one update per step, identical on every rank.
(With a single call per block per step, e.g. reverse-KL ``fit`` or vectorised particles, and one rank,
that is exactly ``with block.adapting():``.)

The same code runs on :class:`~pyro_snf.distributed.sharding.EmulatedShards` in one process (a loop over
the shards' streams whose gradients accumulate), the single-process reference that a ``W``-rank run
reproduces up to float rounding (in practice to the bit for ``W = 2``: ``a + b = b + a``).

Example (two emulated shards; under torchrun leave ``shards`` out)::

    >>> import torch
    >>> from pyro_snf.architectures import make_snf
    >>> from pyro_snf.targets import DoubleWell
    >>> from pyro_snf.distributed.sharding import EmulatedShards
    >>> torch.manual_seed(0) and None
    >>> snf = make_snf(DoubleWell(), block="metropolis", hidden_dims=(8,),
    ...                block_kwargs={"num_steps": 2, "adapt_step_size": True})
    >>> hist = data_parallel_fit(snf, num_iterations=3, batch_size=16, adapt_step_sizes=True,
    ...                          shards=EmulatedShards(seed=1, world_size=2))
    >>> len(hist.loss), all(b.step_size != 0.1 for b in snf.blocks)
    (3, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import pyro
import torch
import torch.distributed as dist
from torch import Tensor, nn

from pyro_snf.blocks import StochasticBlock
from pyro_snf.distributed.sharding import ProcessGroupShards, check_same_across_ranks, comm_device
from pyro_snf.distribution import StochasticNormalizingFlow
from pyro_snf.train import TrainHistory, objective

__all__ = ["Shards", "adapt_step_sizes_from", "average_gradients", "broadcast_state", "data_parallel_fit"]


class Shards(Protocol):
    """What data-parallel steps need: :class:`ProcessGroupShards` or :class:`EmulatedShards`."""

    world_size: int
    shard_ids: Sequence[int]

    def shard(self, k: int) -> AbstractContextManager[None]: ...

    def allreduce_sum(self, t: Tensor) -> Tensor: ...

    def seed(self, seed: int) -> None: ...


def average_gradients(params: Sequence[Tensor], shards: Shards, mean: bool = True) -> None:
    """Sum (``mean``: and divide by the world size) each parameter's gradient over ranks, in place.

    One all-reduce per dtype of all gradients flattened in ``params`` order (the same on every rank); a
    parameter without a gradient on every rank keeps ``grad = None`` (optimisers then skip it)."""
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
    shards.allreduce_sum(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for dtype in sorted({p.dtype for p in live}, key=str):
        group = [p for p in live if p.dtype == dtype]
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        shards.allreduce_sum(flat)
        if mean:
            flat.div_(shards.world_size)
        for p, g in zip(group, flat.split([p.numel() for p in group])):
            p.grad.copy_(g.view_as(p))


def adaptive_blocks(blocks: Sequence[StochasticBlock]) -> list[StochasticBlock]:
    """The blocks that adapt their step size (after :func:`check_not_adapting`)."""
    check_not_adapting(blocks)
    return [b for b in blocks if b.adapt_step_size]


def check_not_adapting(blocks: Sequence[StochasticBlock]) -> None:
    """Refuse blocks inside ``adapting()``: each rank would adapt to its own acceptance and the step sizes
    would drift apart across ranks."""
    if any(b.adapt_step_size and b._adapt_now for b in blocks):
        raise RuntimeError("a data-parallel step ran inside adapting(): every rank would adapt its step "
                           "sizes to its own acceptance and they would differ across ranks. Leave "
                           "adapting() and pass adapt_step_sizes=True (step sizes then follow the "
                           "acceptance averaged over ranks, once per step)")


def local_acceptance(blocks: Sequence[StochasticBlock]) -> Tensor:
    """The acceptance rate of each block's last call, as float64 (blocks that never ran: an error)."""
    if any(b.last_info is None for b in blocks):
        raise RuntimeError("a block with adapt_step_size did not run in this step, so its step size cannot "
                           "adapt; pass adapt_step_sizes=False or make every block run")
    return torch.stack([b.last_info.acceptance_rate.detach().double().cpu() for b in blocks]) if blocks \
        else torch.zeros(0, dtype=torch.float64)


def adapt_step_sizes_from(blocks: Sequence[StochasticBlock], mean_acceptance: Tensor) -> None:
    """``log eps += adapt_rate * (acceptance - target_accept)`` per block, from pooled acceptance rates."""
    with torch.no_grad():
        for b, rate in zip(blocks, mean_acceptance.tolist()):
            b.log_step_size.add_(b.adapt_rate * (torch.tensor(rate, dtype=b.log_step_size.dtype)
                                                 - b.target_accept))


def broadcast_state(module: nn.Module | None = None, param_store: bool = True, src: int = 0) -> None:
    """Copy Pyro's param store values and ``module``'s parameters and buffers from rank ``src`` to every
    rank, in place (call once after building a model or guide on every rank, before training).

    :raises ValueError: if the ranks' param stores hold different names or shapes."""
    tensors: list[tuple[str, Tensor]] = []
    if param_store:
        tensors += sorted(pyro.get_param_store().named_parameters())
    if module is not None:
        tensors += [(f"module.{k}", v) for k, v in sorted(module.state_dict(keep_vars=True).items())
                    if isinstance(v, Tensor)]
    check_same_across_ranks([(n, tuple(t.shape), str(t.dtype)) for n, t in tensors], "the parameter layout",
                            "build the guide/flow identically on every rank (same arguments, one call "
                            "of the guide to create its parameters) before broadcasting")
    dev = comm_device()
    for _, t in tensors:
        if t.device == dev:
            dist.broadcast(t.data, src=src)
        else:
            moved = t.detach().to(dev)
            dist.broadcast(moved, src=src)
            t.data.copy_(moved)


def data_parallel_fit(
    snf: StochasticNormalizingFlow, *, num_iterations: int = 1000, batch_size: int = 128, lr: float = 5e-3,
    kl_weight: float = 1.0, ml_weight: float = 0.0, data: Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None, clip_grad_norm: float | None = None,
    adapt_step_sizes: bool = False, shards: Shards | None = None, history: TrainHistory | None = None,
) -> TrainHistory:
    """:func:`pyro_snf.train.fit` over the ranks of a process group (or ``shards``).

    ``batch_size`` is the GLOBAL batch (a multiple of the world size); each shard draws
    ``batch_size / W`` particles (and, for ``ml_weight > 0``, ``batch_size / W`` random rows of ``data``)
    on its own stream. Losses in the history are the global-batch losses (mean over ranks; identical on
    every rank). Call :func:`broadcast_state` ``(snf.module)`` first unless every rank built the flow
    from the same seed. Particles with non-finite weights are left out per shard (the global mean then
    weighs shards equally).
    """
    shards = shards or ProcessGroupShards(None, "data_parallel_fit", "pyro_snf.train.fit")
    world = shards.world_size
    if num_iterations < 1 or batch_size < 1 or batch_size % world:
        raise ValueError(f"need num_iterations >= 1 and batch_size a positive multiple of the world size "
                         f"{world}; got {num_iterations}, {batch_size}")
    if kl_weight < 0 or ml_weight < 0 or kl_weight + ml_weight == 0:
        raise ValueError(f"need kl_weight, ml_weight >= 0, not both 0; got {kl_weight}, {ml_weight}")
    if ml_weight > 0 and data is None:
        raise ValueError("ml_weight > 0 needs target samples: pass data=")
    params = list(snf.parameters())
    optimizer = optimizer or torch.optim.Adam(params, lr=lr)
    history = history or TrainHistory()
    blocks = adaptive_blocks(snf.blocks) if adapt_step_sizes else []
    local_b = batch_size // world
    for _ in range(num_iterations):
        check_not_adapting(snf.blocks)
        optimizer.zero_grad(set_to_none=True)
        stats = torch.zeros(4 + len(blocks), dtype=torch.float64)
        for k in shards.shard_ids:
            with shards.shard(k):
                loss, kl, ml, bad = objective(snf, local_b, kl_weight, ml_weight, data)
                loss.backward()
            stats += torch.cat([torch.stack([t.detach().double().cpu() for t in (loss, kl, ml, bad)]),
                                local_acceptance(blocks)])
        average_gradients(params, shards)
        shards.allreduce_sum(stats)
        stats[:3].div_(world)
        stats[4:].div_(world)
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm or float("inf"))
        if torch.isfinite(norm) and torch.isfinite(stats[0]):
            optimizer.step()
        else:
            history.num_skipped_steps += 1
        if blocks:
            adapt_step_sizes_from(blocks, stats[4:])
        loss_, kl_, ml_, bad_ = stats[:4].tolist()
        history.loss.append(loss_)
        history.kl.append(kl_ if kl_weight > 0 else float("nan"))
        history.ml.append(ml_ if ml_weight > 0 else float("nan"))
        history.num_nonfinite_particles += int(bad_)
    return history

