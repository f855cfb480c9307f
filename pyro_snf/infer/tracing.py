"""The one shared home for the Pyro-trace helpers of :mod:`pyro_snf.infer`.

:mod:`~pyro_snf.infer.potential` (the vectorised model energy behind ``AutoSNF``) and
:mod:`~pyro_snf.infer.importance` (``importance_sample``) both run a Pyro model under an extra
"particle" plate placed left of every model plate, and both need the same few things from its traces:

- :func:`trace_model`: one prior run of the model for its structure, hidden from outer handlers;
- :func:`sample_sites`: the sample sites of a trace, without the plates' own subsample sites;
- :func:`max_plate_nesting`: how many batch dims the model uses, so that the particle plate goes left
  of them; :func:`particle_dim`: that dim, clear of every plate open right now;
- :func:`per_particle_sum`: one log-density per particle from a site's log-density tensor;
- :func:`check_no_subsampling` and :func:`check_site_plates`: refuse plates that subsample the data
  (both callers need the exact log density of the full data set);
- :func:`check_observed_finite`: refuse observed data holding NaN/inf that no mask excludes.

Where the two callers had different rules, the rule is a parameter or a separate entry point and each
caller keeps its own (see each function).

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model():
    ...     with pyro.plate("data", 3):
    ...         pyro.sample("x", dist.Normal(torch.zeros(2, 1, 3), 1.0))  # batch rank 3, one plate
    >>> tr = trace_model(model)
    >>> [s["name"] for s in sample_sites(tr)], max_plate_nesting(tr), max_plate_nesting(tr, batch_ranks=False)
    (['x'], 3, 1)
    >>> per_particle_sum(torch.ones(4, 3), 4, -2)  # particle dim -2, left of the plate dim
    tensor([3., 3., 3., 3.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.runtime import _DIM_ALLOCATOR
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = [
    "Subsampling",
    "check_no_subsampling",
    "check_observed_finite",
    "check_site_plates",
    "max_plate_nesting",
    "particle_dim",
    "per_particle_sum",
    "sample_sites",
    "subsampling",
    "trace_model",
    "unmasked_entries",
]


def trace_model(model: Callable, args: tuple = (), kwargs: dict | None = None) -> Trace:
    """One prior run of ``model`` for its structure (validation off), hidden from outer handlers."""
    with pyro.validation_enabled(False):
        return poutine.block(poutine.trace(model).get_trace)(*args, **(kwargs or {}))


def sample_sites(trace: Trace) -> list[dict]:
    """The sample sites of ``trace`` in trace order (observed, latent, factor), without the plates'
    own subsample sites."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def max_plate_nesting(*traces: Trace, batch_ranks: bool = True, plate_sites: bool = False) -> int:
    """Number of batch dims the model uses: the depth of the vectorised plates its sample sites are in.

    :param batch_ranks: or its sites' batch ranks if larger, so that the particle dim clears a site
        whose distribution has batch dims of its own, outside any plate (``ModelPotential``, ``AutoSNF``).
    :param plate_sites: count the plates' own subsample sites too: a plate that holds only other plates
        still takes its dim (``importance_sample``, which counts plate dims only: ``batch_ranks=False``,
        and takes its user's ``max_plate_nesting`` for the rest).
    """
    depth = 0
    for tr in traces:
        sites = [s for s in tr.nodes.values() if s["type"] == "sample"] if plate_sites else sample_sites(tr)
        for site in sites:
            rank = len(site["fn"].batch_shape) if batch_ranks else 0
            depth = max(depth, rank, *(-f.dim for f in site["cond_indep_stack"] if f.vectorized))
    return depth


def particle_dim(max_plate_nesting: int) -> int:
    """A free batch dim left of the model's plates and of every plate open right now."""
    in_use = len(getattr(_DIM_ALLOCATOR, "_stack", ()))
    return -(max(max_plate_nesting, in_use) + 1)


def per_particle_sum(t: Tensor, n: int, dim: int, name: str = "", *, sum_left: bool = False) -> Tensor:
    """One number per particle: a site's log-density ``t`` summed over every dim but the particle dim.

    :param dim: the particle dim (negative, left of the model's plates); the result has shape ``(n,)``.
        ``t`` without it (fewer dims, or size 1 there) is the same for every particle: its total.
    :param sum_left: what to do with dims left of the particle dim (the model made batch dims of its
        own instead of broadcasting over particles): ``False`` refuses them with a ``ValueError`` that
        names the site (``ModelPotential``); ``True`` sums them too (``importance_sample``).
    :raises ValueError: for a particle dim of a size other than 1 or ``n``.
    """
    k = -dim
    if t.dim() < k:  # no particle dim: the same for every particle
        return t.sum().expand(n)
    if t.dim() > k and not sum_left:
        raise ValueError(
            f"site '{name}' has log_prob of shape {tuple(t.shape)}, with dims left of the particle dim "
            f"{dim} (left of all the model's plates): the model does not broadcast over a batch of latent "
            "values. Write it as for Trace_ELBO(vectorize_particles=True), e.g. index from the right "
            "(x[..., i], sum(-1)) and let pyro.plate handle batch dims"
        )
    rows = t.flatten(t.dim() - k + 1).sum(-1) if k > 1 else t  # the dims right of the particle dim
    if rows.dim() > 1:  # sum_left: then the dims left of it
        rows = rows.reshape(-1, rows.shape[-1]).sum(0)
    if rows.shape[0] not in (1, n):
        raise ValueError(
            f"site {name!r}: its log-density has {rows.shape[0]} entries along the particle dim "
            f"{dim}, expected {n}; is the model vectorisable under an outer plate?"
        )
    return rows.expand(n)


# -- subsampling --------------------------------------------------------------------------------
class Subsampling(NamedTuple):
    """A plate that uses ``size`` of its ``full_size`` elements (``subsample_size`` / ``subsample``)."""

    plate: str
    size: int
    full_size: int


def subsampling(plate: dict | CondIndepStackFrame) -> Subsampling | None:
    """The subsampling of a plate, seen at its own subsample site or at a frame of a site inside it;
    ``None`` when the plate uses all its elements."""
    if isinstance(plate, CondIndepStackFrame):
        if plate.full_size is not None and plate.full_size != plate.size:
            return Subsampling(plate.name, plate.size, plate.full_size)
        return None
    size, used = plate["fn"].size, plate["value"].numel()
    return Subsampling(plate["name"], used, size) if used != size else None


def check_no_subsampling(trace: Trace, who: str) -> None:
    """``importance_sample``'s check, on the guide and the model trace of every run: each plate's own
    subsample site (a subsampled plate is refused even with nothing inside it).

    :raises ValueError: naming the plate and ``who`` (``"guide"`` or ``"model"``).
    """
    for site in trace.nodes.values():
        sub = subsampling(site) if site["type"] == "sample" and site_is_subsample(site) else None
        if sub is not None:
            raise ValueError(
                f"plate {sub.plate!r} in the {who} subsamples {sub.size} of {sub.full_size} elements. "
                "Importance weights need the full log-likelihood (a rescaled minibatch estimate inside "
                "exp() gives biased, noisy weights): use the plate without subsample_size / subsample"
            )


def check_site_plates(site: dict, who: str) -> None:
    """``ModelPotential``'s check of one sample site: each of its plates, innermost first, must be
    vectorised and not subsampled (a subsampled plate with no sample site inside passes).

    :raises NotImplementedError: naming the site and the plate; ``who`` is the caller in the message.
    """
    for frame in site["cond_indep_stack"]:
        if not frame.vectorized:
            raise NotImplementedError(f"site '{site['name']}' is in a sequential plate '{frame.name}'; "
                                      f"{who} needs vectorised pyro.plate")
        sub = subsampling(frame)
        if sub is not None:
            raise NotImplementedError(
                f"site '{site['name']}' is in the subsampled plate '{sub.plate}' (size {sub.size} of "
                f"{sub.full_size}); {who} needs the exact log density of the full data set, so "
                "subsampling is not supported: use the plate without subsample_size/subsample"
            )


def unmasked_entries(fn: Any, mask: Any, value: Tensor) -> Tensor | None:
    """Where an observed ``value`` enters its site's log-density (shape of ``value``): not excluded by
    the site's mask (``poutine.mask``, ``obs_mask``) or a ``.mask()`` of its distribution. ``None`` when
    nothing is masked out."""
    masks, f = [(mask, getattr(fn, "event_dim", 0))], fn
    while isinstance(f, (Independent, MaskedDistribution, ExpandedDistribution)):
        if isinstance(f, MaskedDistribution):
            masks.append((f._mask, f.event_dim))
        f = f.base_dist
    kept = None
    for m, event_dim in masks:
        if m is False:
            return torch.zeros(value.shape, dtype=torch.bool, device=value.device)
        if not torch.is_tensor(m):
            continue
        m = m.reshape(m.shape + (1,) * event_dim)
        m = torch.broadcast_to(m, torch.broadcast_shapes(m.shape, value.shape))
        m = m.long().sum_to_size(value.shape) > 0  # kept where any broadcast copy is kept
        kept = m if kept is None else kept & m
    return kept


def check_observed_finite(trace: Trace, who: str) -> None:
    """Refuse an observed site whose value holds NaN/inf entries that no mask excludes (see
    :func:`unmasked_entries`): their log-likelihood is not finite for any latent value, so every
    weight is zero (silently with Pyro validation off, and always inside ``ModelPotential``).

    :raises ValueError: naming the site, the count of non-finite entries and the fixes.
    """
    for site in sample_sites(trace):
        value = site["value"]
        if (not site["is_observed"] or site["infer"].get("_deterministic") or not torch.is_tensor(value)
                or not value.is_floating_point()):
            continue
        bad = ~torch.isfinite(value.detach())
        if not bool(bad.any()):
            continue
        try:
            kept = unmasked_entries(site["fn"], site["mask"], value)
        except RuntimeError:  # a mask that does not broadcast: the model's own error follows
            continue
        count = int((bad if kept is None else bad & kept).sum())
        if count:
            name = site["name"]
            raise ValueError(
                f"observed site '{name}' holds {count} non-finite (NaN/inf) value(s) of {value.numel()}: "
                f"its log-likelihood is not finite for any latent value, so {who} would give every particle "
                "zero weight. Drop or impute those observations, or mask them out: mask = torch.isfinite(y) "
                "(.all(-1) for vector events), y = torch.where(mask, y, 0.0) (a placeholder in the support: "
                f"masked NaNs still give NaN gradients in Pyro's ELBO), then pyro.sample('{name}', ..., "
                "obs=y, obs_mask=mask) or the site inside `with poutine.mask(mask=mask):`"
            )
