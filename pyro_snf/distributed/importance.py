"""Importance sampling sharded over the ranks of a process group, pooled exactly.

Rank ``r`` draws its shard (:func:`~pyro_snf.distributed.sharding.shard_sizes`) from its own stream
(``seed + r * SEED_STRIDE``), the log-weights :math:`\\log w` of all ranks are gathered in float64
(8 bytes per draw) and every rank builds the pooled :class:`~pyro_snf.infer.ImportanceResult` from their
concatenation in rank order, so

.. math::

    \\log \\hat Z = \\log \\tfrac1n \\textstyle\\sum_{r} \\sum_{i \\in r} w_i, \\quad
    \\widehat{\\mathrm{se}}, \\quad \\mathrm{ESS} = (\\textstyle\\sum w)^2 / \\sum w^2, \\quad \\hat k

are, to the last bit, the single-process numbers on the same draws (``importance_sample`` run once per
shard seed, results concatenated); k-hat needs the whole upper tail of the pooled weights, which the
gathered weights give exactly.

Draws are gathered only within a memory budget: with ``gather_samples=True`` (or ``None`` and the draws
fit in ``max_gather_bytes``) ``samples`` holds all pooled draws; otherwise ``samples`` is empty and
``num_resample`` equally weighted draws, resampled from the pooled weights (systematic, the same indices
on every rank), are assembled on every rank by an all-reduce of the rows each rank owns (``R * D``
numbers, never ``n * D``) and returned in ``result.resampled`` (also set when gathering everything).

Example (a world-size-1 group: the result equals ``importance_sample`` with the same seed)::

    >>> import os, torch, pyro, pyro.distributions as dist, torch.distributed as tdist
    >>> from pyro.infer.autoguide import AutoNormal
    >>> from pyro_snf.infer import importance_sample
    >>> from pyro_snf.distributed.launch import free_port
    >>> os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    >>> tdist.init_process_group("gloo", rank=0, world_size=1)
    >>> def model():
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor(0.5))
    >>> guide = AutoNormal(model, init_scale=1.0)
    >>> pyro.set_rng_seed(0); _ = guide()
    >>> res = sharded_importance_sample(model, guide, num_samples=500, seed=3, num_resample=100)
    >>> pyro.set_rng_seed(3)
    >>> ref = importance_sample(model, guide, num_samples=500, warn=False)
    >>> ref = concatenate_results([ref])  # weights in float64, as the pooled ones
    >>> res.log_evidence == ref.log_evidence, res.ess == ref.ess, res.khat == ref.khat
    (True, True, True)
    >>> res.samples["mu"].shape, res.resampled["mu"].shape
    (torch.Size([500]), torch.Size([100]))
    >>> tdist.destroy_process_group()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from torch import Tensor

from pyro_snf.diagnostics.arviz_compat import KHAT_THRESHOLD, psis_khat
from pyro_snf.distributed.sharding import (
    all_gather_cat,
    all_reduce_sum_,
    check_same_across_ranks,
    require_process_group,
    shard_seed,
    shard_sizes,
    state_fingerprint,
)
from pyro_snf.distribution import StochasticNormalizingFlow
from pyro_snf.infer.importance import importance_sample
from pyro_snf.infer.result import ImportanceResult, SiteInfo

__all__ = ["ShardedImportanceResult", "concatenate_results", "sharded_flow_sample",
           "sharded_importance_sample"]

#: default budget for gathering pooled draws onto every rank (bytes per rank).
DEFAULT_GATHER_BYTES = 2**29


@dataclass(repr=False)
class ShardedImportanceResult(ImportanceResult):
    """An :class:`~pyro_snf.infer.ImportanceResult` over the pooled draws of all ranks.

    ``log_weights`` (and ``log_model``, ``log_guide``) are pooled; ``samples`` holds the pooled draws
    when they were gathered and is empty otherwise. Extra: ``resampled`` (site -> equally weighted pooled
    draws, or None), ``shard_sizes`` (draws per rank), ``rank``.
    """

    resampled: dict[str, Tensor] | None = None
    shard_sizes: tuple[int, ...] = ()
    rank: int = 0
    local: ImportanceResult | None = field(default=None)

    def _site_table(self, max_site_size: int, probs: Sequence[float]) -> list[str]:
        if self.samples or not self.resampled:
            return super()._site_table(max_site_size, probs)
        n = next(iter(self.resampled.values())).shape[0]
        return [f"(pooled draws not gathered: result.resampled holds {n} equally weighted pooled draws; "
                "result.local this rank's weighted shard)"]


def concatenate_results(results: Sequence[ImportanceResult]) -> ImportanceResult:
    """The single-process pooled result of shards run one after the other: weights and draws
    concatenated (weights in float64), k-hat recomputed on the pooled weights."""
    lw = torch.cat([r.log_weights.double() for r in results])
    cat = _cat_optional
    return ImportanceResult(
        log_weights=lw,
        samples={name: torch.cat([r.samples[name] for r in results]) for name in results[0].samples},
        khat=psis_khat(lw),
        num_nonfinite=sum(r.num_nonfinite for r in results),
        log_model=cat([r.log_model for r in results]),
        log_guide=cat([r.log_guide for r in results]),
        sites=results[0].sites,
        prior_sites=results[0].prior_sites,
    )


def sharded_importance_sample(
    model: Callable[..., Any], guide: Callable[..., Any], *args: Any, num_samples: int, seed: int,
    gather_samples: bool | None = None, num_resample: int | None = None,
    max_gather_bytes: int = DEFAULT_GATHER_BYTES, check_guide: bool = True, warn: bool = True, **kwargs: Any,
) -> ShardedImportanceResult:
    """:func:`~pyro_snf.infer.importance_sample` with ``num_samples`` draws in total, shared by the ranks.

    Call it on every rank with the same arguments. ``seed`` is required (rank ``r`` reseeds Pyro with
    ``shard_seed(seed, r)``); other keywords (``batch_size``, ``max_plate_nesting``, model kwargs) go to
    ``importance_sample``.

    :param gather_samples: gather all pooled draws on every rank (None: if they fit ``max_gather_bytes``).
    :param num_resample: size of a pooled equally weighted resample returned in ``result.resampled``.
    :param check_guide: refuse guides whose parameters differ across ranks (a SHA-256 of Pyro's param
        store and, for an ``nn.Module`` guide, its state).
    :raises RuntimeError: without an initialised process group.
    :raises ValueError: if ``num_samples``/``seed`` differ across ranks, the guide differs, or
        ``gather_samples=True`` exceeds the budget.
    """
    rank, world = require_process_group("sharded_importance_sample", "pyro_snf.infer.importance_sample")
    check_same_across_ranks((int(num_samples), int(seed), num_resample), "(num_samples, seed, num_resample)",
                            "pass the same global values on every rank")
    if check_guide:
        module = guide if isinstance(guide, torch.nn.Module) else None
        check_same_across_ranks(state_fingerprint(module), "the guide's parameters (SHA-256)",
                                "train on one rank and broadcast (pyro_snf.distributed.broadcast_state), or "
                                "seed identically before building the guide on every rank")
    sizes = _sizes(num_samples, world)
    pyro.set_rng_seed(shard_seed(seed, rank))
    local = importance_sample(model, guide, *args, num_samples=sizes[rank], warn=False, **kwargs)
    return _pool(local, sizes, rank, seed, gather_samples, num_resample, max_gather_bytes, warn)


def sharded_flow_sample(
    snf: StochasticNormalizingFlow, num_samples: int, *, seed: int, batch_size: int | None = None,
    gather_samples: bool | None = None, num_resample: int | None = None,
    max_gather_bytes: int = DEFAULT_GATHER_BYTES, warn: bool = True,
) -> ShardedImportanceResult:
    """:meth:`StochasticNormalizingFlow.sample_and_log_weight` sharded over the ranks: the pooled weights
    against ``exp(-u)`` (their log mean estimates ``log Z``) as a result with the one site ``"x"``.
    Rank ``r`` draws ``shard_sizes(num_samples, W)[r]`` samples in batches of ``batch_size`` (default:
    all at once) after ``pyro.set_rng_seed(shard_seed(seed, r))``."""
    rank, world = require_process_group("sharded_flow_sample",
                                        "StochasticNormalizingFlow.sample_and_log_weight")
    check_same_across_ranks((int(num_samples), int(seed), num_resample), "(num_samples, seed, num_resample)",
                            "pass the same global values on every rank")
    check_same_across_ranks(state_fingerprint(snf.module, param_store=False),
                            "the flow's parameters (SHA-256)",
                            "build the flow with the same seed on every rank, or broadcast_state(snf.module)")
    sizes = _sizes(num_samples, world)
    pyro.set_rng_seed(shard_seed(seed, rank))
    local = flow_result(snf, sizes[rank], batch_size)
    return _pool(local, sizes, rank, seed, gather_samples, num_resample, max_gather_bytes, warn)


def flow_result(snf: StochasticNormalizingFlow, num_samples: int,
                batch_size: int | None = None) -> ImportanceResult:
    """One process's draws of ``snf`` as an ImportanceResult (site ``"x"``), batch by batch."""
    batch_size = int(batch_size or num_samples)
    xs, lws = [], []
    for start in range(0, num_samples, batch_size):
        x, lw = snf.sample_and_log_weight((min(batch_size, num_samples - start),))
        xs.append(x)
        lws.append(lw)
    lw = torch.cat(lws).double()
    return ImportanceResult(lw, {"x": torch.cat(xs)}, khat=psis_khat(lw),
                            sites={"x": SiteInfo(tuple(xs[0].shape[1:]), event_dim=1)})


def _pool(local: ImportanceResult, sizes: list[int], rank: int, seed: int, gather_samples: bool | None,
          num_resample: int | None, max_bytes: int, warn: bool) -> ShardedImportanceResult:
    n = sum(sizes)
    row_bytes = sum(v[0].numel() * v.element_size() for v in local.samples.values())
    if gather_samples is None:
        gather_samples = n * row_bytes <= max_bytes
    elif gather_samples and n * row_bytes > max_bytes:
        raise ValueError(f"gathering all {n} draws needs {n * row_bytes / 2**20:.0f} MiB per rank > "
                         f"max_gather_bytes = {max_bytes / 2**20:.0f} MiB: raise max_gather_bytes, or pass "
                         "gather_samples=False and num_resample= for an equally weighted pooled resample")
    lw = all_gather_cat(local.log_weights.double())
    pooled = ImportanceResult(lw, {}, khat=psis_khat(lw))  # psis on the pooled weights: exact tail
    nonfinite = all_reduce_sum_(torch.tensor(local.num_nonfinite, dtype=torch.int64))
    samples = {k: all_gather_cat(v) for k, v in local.samples.items()} if gather_samples else {}
    gathered_lp = _gather_optional(local.log_model) if gather_samples else None
    gathered_lq = _gather_optional(local.log_guide) if gather_samples else None
    resampled = None
    if num_resample is not None:
        gen = torch.Generator().manual_seed(shard_seed(seed, len(sizes)))  # same stream on every rank
        idx = pooled.resample_indices(int(num_resample), generator=gen)
        if gather_samples:
            resampled = {k: v[idx] for k, v in samples.items()}
        else:
            resampled = _resample_rows(local, idx, sizes, rank)
    out = ShardedImportanceResult(
        log_weights=lw, samples=samples, khat=pooled.khat, num_nonfinite=int(nonfinite),
        log_model=gathered_lp, log_guide=gathered_lq, sites=local.sites, prior_sites=local.prior_sites,
        resampled=resampled, shard_sizes=tuple(sizes), rank=rank, local=local)
    if warn and rank == 0 and out.khat > KHAT_THRESHOLD and math.isfinite(out.log_evidence):
        warnings.warn(f"pooled PSIS k-hat = {out.khat:.2f} > {KHAT_THRESHOLD}: the weights are heavy-tailed "
                      "and the pooled log evidence is not trustworthy", UserWarning, stacklevel=3)
    return out


def _resample_rows(local: ImportanceResult, idx: Tensor, sizes: list[int], rank: int) -> dict[str, Tensor]:
    """Rows ``idx`` of the pooled draws, each rank filling the rows it owns, summed over ranks (x + 0 = x
    exactly, so the result is the pooled draws' rows bit for bit)."""
    start = sum(sizes[:rank])
    mine = (idx >= start) & (idx < start + sizes[rank])
    out = {}
    for name, value in local.samples.items():
        rows = value.new_zeros((idx.numel(), *value.shape[1:]))
        rows[mine] = value[idx[mine] - start]
        if not rows.is_floating_point():
            raise TypeError(f"cannot resample non-floating site {name!r} across ranks")
        out[name] = all_reduce_sum_(rows)
    return out


def _sizes(num_samples: int, world: int) -> list[int]:
    sizes = shard_sizes(num_samples, world)
    if min(sizes) < 1:
        raise ValueError(f"num_samples = {num_samples} < world size {world}: every rank needs a draw")
    return sizes


def _gather_optional(t: Tensor | None) -> Tensor | None:
    return None if t is None else all_gather_cat(t.double())


def _cat_optional(parts: list[Tensor | None]) -> Tensor | None:
    return None if any(p is None for p in parts) else torch.cat([p.double() for p in parts])
