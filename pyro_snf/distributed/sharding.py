"""Ranks, shards and seed streams: the bookkeeping every multi-process piece shares.

A job of ``W`` processes (ranks ``0..W-1``, launched e.g. by ``torchrun --nproc_per_node W``) splits
``n`` draws into ``W`` shards, shard ``r`` holding :math:`n_r = \\lfloor n/W \\rfloor + [r < n \\bmod W]`
draws, drawn on rank ``r`` from its own seed stream

.. math::

    \\mathrm{seed}_r = \\mathrm{seed} + r \\cdot S, \\qquad S = \\mathtt{SEED\\_STRIDE} = 1\\,000\\,003,

so shard 0 is what one process seeded with ``seed`` draws, and the draws of a ``W``-rank run are those
of ``W`` single-process runs seeded ``seed_0, ..., seed_{W-1}``, concatenated in rank order. That is
the exactness contract: every pooled number (log evidence, SE, ESS, k-hat, training losses) equals the
single-process number on that union. :class:`EmulatedShards` is that single process: it keeps one
torch RNG state per shard and switches between them, so tests and benchmarks can compute the
reference without a process group; :class:`ProcessGroupShards` is the real thing (one shard per rank,
sums are all-reduces). Both offer ``shard_ids``, ``shard(k)`` (a context running shard ``k``'s
stream) and ``allreduce_sum`` (the sum over ranks of per-rank partial sums), so training code is
written once for both.

Example (no process group needed)::

    >>> shard_sizes(10, 3), shard_seed(7, 2)
    ([4, 3, 3], 2000013)
    >>> import torch
    >>> shards = EmulatedShards(seed=0, world_size=2)
    >>> with shards.shard(1):
    ...     a = torch.rand(2)
    >>> torch.manual_seed(shard_seed(0, 1)) and bool(torch.equal(a, torch.rand(2)))
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyro
import torch
import torch.distributed as dist
from torch import Tensor

#: rank ``r`` seeds with ``seed + r * SEED_STRIDE`` (a prime, far from the seeds people type by hand).
SEED_STRIDE = 1_000_003


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard (rank) ``shard`` in a job seeded ``seed``."""
    return int(seed) + int(shard) * SEED_STRIDE


def shard_sizes(num_samples: int, world_size: int) -> list[int]:
    """Draws per shard: ``num_samples`` split as evenly as possible, the first shards one larger."""
    base, extra = divmod(int(num_samples), int(world_size))
    return [base + (r < extra) for r in range(int(world_size))]


def require_process_group(who: str, alternative: str) -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, or a ``RuntimeError`` saying how to get one."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{who} needs an initialised torch.distributed process group: launch the script with "
            "`torchrun --nproc_per_node N script.py` and call torch.distributed.init_process_group('gloo') "
            f"(CPU) or ('nccl') (GPU) first; for one process use {alternative} instead")
    return dist.get_rank(), dist.get_world_size()


def check_same_across_ranks(value: Any, what: str, fix: str) -> None:
    """Raise a ``ValueError`` on every rank if ``value`` (any picklable object) differs across ranks."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {r}: {v!r}"[:200] for r, v in enumerate(values))
        raise ValueError(f"{what} differs across ranks ({shown}); {fix}")


def comm_device() -> torch.device:
    """Where collectives need their tensors: the current CUDA device for nccl, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(t: Tensor) -> Tensor:
    """In place: the sum of ``t`` over ranks (moved to :func:`comm_device` and back if needed)."""
    dev = comm_device()
    if t.device == dev:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    else:
        moved = t.to(dev)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        t.copy_(moved)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate, in rank order along dim 0, tensors whose first dims may differ across ranks (same
    trailing shape and dtype everywhere); every rank gets the result."""
    world, dev = dist.get_world_size(), comm_device()
    sizes = [torch.zeros((), dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(t.shape[0], dtype=torch.int64, device=dev))
    longest = int(max(sizes))
    padded = t.new_zeros((longest, *t.shape[1:]), device=dev)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes)]).to(t.device)


def state_fingerprint(module: torch.nn.Module | None = None, param_store: bool = True) -> str:
    """SHA-256 of the values of Pyro's param store and of ``module``'s state (parameters and buffers),
    in name order: equal fingerprints on two ranks mean bitwise equal guides."""
    h = hashlib.sha256()
    items: list[tuple[str, Tensor]] = []
    if param_store:
        store = pyro.get_param_store()
        items += [(f"store:{k}", store[k]) for k in sorted(store.keys())]
    if module is not None:
        items += [(f"module:{k}", v) for k, v in sorted(module.state_dict().items()) if isinstance(v, Tensor)]
    for name, value in items:
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ProcessGroupShards:
    """One shard per rank of the default process group; sums over shards are all-reduces."""

    def __init__(self, seed: int | None = None, who: str = "ProcessGroupShards",
                 alternative: str = "EmulatedShards") -> None:
        self.rank, self.world_size = require_process_group(who, alternative)
        self.shard_ids: Sequence[int] = (self.rank,)
        if seed is not None:
            self.seed(seed)

    @contextmanager
    def shard(self, k: int) -> Iterator[None]:
        yield  # the process's own RNG is shard k's stream (seeded by seed_rank)

    def allreduce_sum(self, t: Tensor) -> Tensor:
        """In place: the sum over ranks (each rank holds its own shard's partial sum)."""
        return all_reduce_sum_(t)

    def seed(self, seed: int) -> None:
        """Seed this rank's stream: ``pyro.set_rng_seed(shard_seed(seed, rank))``."""
        pyro.set_rng_seed(shard_seed(seed, self.rank))


class EmulatedShards:
    """``world_size`` shards in one process: shard ``k`` runs on its own torch RNG stream (seeded as
    rank ``k`` of a real job), so a loop over shards reproduces the draws of a ``world_size``-rank job.
    ``allreduce_sum`` is the identity: the caller has already summed over its (local) shards."""

    def __init__(self, seed: int, world_size: int) -> None:
        if int(world_size) < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = int(world_size)
        self.shard_ids: Sequence[int] = tuple(range(self.world_size))
        self._states: list[Tensor] = []
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Restart every shard's stream from ``shard_seed(seed, k)``."""
        saved = torch.get_rng_state()
        self._states = []
        for k in self.shard_ids:
            torch.manual_seed(shard_seed(seed, k))
            self._states.append(torch.get_rng_state())
        torch.set_rng_state(saved)

    @contextmanager
    def shard(self, k: int) -> Iterator[None]:
        """Run the body on shard ``k``'s torch (CPU) RNG stream, then park that stream again."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self._states[k])
        try:
            yield
        finally:
            self._states[k] = torch.get_rng_state()
            torch.set_rng_state(saved)

    def allreduce_sum(self, t: Tensor) -> Tensor:
        return t
