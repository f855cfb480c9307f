"""The per-datapoint log joint of a local-latent Pyro model, for :class:`~pyro_snf.infer.AmortizedSNF`.

A local-latent model has one latent ``z_i`` per data point inside a data plate and every other site in
that plate too, so its log joint splits over data points:
``log p(x, z) = sum_i log p(x_i, z_i)``. :func:`local_layout` traces the model once (a prior draw,
hidden from outer handlers) and checks this structure, with clear errors for global latents, sites
outside the plate, several local latents, discrete latents and subsampled inner plates; it records the
plate's dim, its size in this call ``B`` (the subsample), its full size ``N`` and the subsample's
indices. :class:`LocalLogJoint` evaluates

.. math::

    \\ell_i(y) = \\log p\\big(x_i, T(y_i)\\big) + \\log|\\det J_T(y_i)|,
    \\qquad y \\in \\mathbb R^{M \\times B \\times D},

for all ``M`` particles and ``B`` data points in ONE model call: ``z`` is conditioned on ``T(y)``
(``T = biject_to(support)``), the model runs under a particle plate left of its own plates, its data
plate is held to the recorded subsample, and each site's ``log_prob`` is summed over every dim but the
particle dim and the data plate's dim. It is never scaled by the plate's ``N / B`` (each data point's
own log joint), while masks and any other ``poutine.scale`` apply.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    ...         pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)
    >>> layout = local_layout(model, "z", "data", (torch.zeros(5),), {})
    >>> layout.size, layout.latent_dim, layout.dim
    (5, 2, -1)
    >>> LocalLogJoint(model, layout, (torch.zeros(5),), {})(torch.zeros(7, 5, 2)).shape
    torch.Size([7, 5])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import ComposeTransform, IndependentTransform, biject_to
from torch.distributions.constraints import Constraint

from pyro_snf.blocks import StochasticBlock
from pyro_snf.infer.potential import _fill_masked, _has_nonfinite, _ScoreMessenger
from pyro_snf.infer.tracing import (
    check_observed_finite,
    max_plate_nesting,
    particle_dim,
    sample_sites,
    subsampling,
    trace_model,
)

_PLATE = "_pyro_snf_local_particles"


@dataclass(frozen=True)
class LocalLayout:
    """Where the local latent and its data plate sit in the model, for one call's arguments."""

    site: str  #: the local latent site
    plate: str  #: the data plate
    dim: int  #: the data plate's dim in the model (negative)
    size: int  #: data points in this call, ``B`` (the subsample size)
    full_size: int  #: the plate's full size ``N``
    indices: Tensor  #: the plate's subsample indices in this call (``arange(N)`` without subsampling)
    point_shape: torch.Size  #: unconstrained shape of one data point's latent (right of the plate dim)
    support: Constraint
    event_dim: int  #: the site's event dim (constrained)
    max_plate_nesting: int

    @property
    def latent_dim(self) -> int:
        """``D``: the number of unconstrained coordinates per data point."""
        return math.prod(self.point_shape)

    @property
    def plate_scale(self) -> float:
        """The scale ``N / B`` that the subsampled plate puts on every site inside it."""
        return self.full_size / self.size


def local_layout(model: Callable, site: str, plate: str, args: tuple, kwargs: dict,
                 who: str = "AmortizedSNF") -> LocalLayout:
    """Trace ``model`` once and check that it is a local-latent model for ``site`` in ``plate``.

    :raises ValueError: no such site or plate, an observed ``site``, observed sites outside the plate,
        observed NaN/inf that no mask excludes, a latent value whose shape does not fit the plate.
    :raises NotImplementedError: global latents, several local latents, a discrete ``site``, sequential
        plates, a plate enclosing the data plate, subsampled plates other than the data plate.
    """
    trace = trace_model(model, args, kwargs)
    check_observed_finite(trace, who)
    sites = sample_sites(trace)
    names = [s["name"] for s in sites]
    node = trace.nodes.get(site)
    if node is None or node["type"] != "sample" or site_is_subsample(node):
        raise ValueError(f"{who}: the model has no sample site {site!r}; its sample sites are {names}")
    if node["is_observed"]:
        raise ValueError(f"{who}: site {site!r} is observed; pass the name of the local latent site")
    frames = {f.name: f for f in node["cond_indep_stack"]}
    if plate not in frames:
        raise ValueError(f"{who}: the local latent site {site!r} is not inside plate {plate!r} (its plates: "
                         f"{sorted(frames)}); pass plate= the name of the data plate it is in")
    frame = frames[plate]
    if not frame.vectorized:
        raise NotImplementedError(f"{who}: plate {plate!r} is sequential; use a vectorised pyro.plate")
    fn = node["fn"]
    if fn.support.is_discrete or node["infer"].get("enumerate"):
        raise NotImplementedError(f"{who}: latent site {site!r} is discrete ({type(fn).__name__}); the "
                                  "blocks need a continuous local latent")
    if len(frames) > 1:
        raise NotImplementedError(f"{who}: site {site!r} is in plates {sorted(frames)}; it must be in plate "
                                  f"{plate!r} only: declare its per-point dims as event dims (.to_event())")
    for s in sites:
        _check_site(s, site, plate, frame.dim, who)
    indices = trace.nodes[plate]["value"] if plate in trace.nodes else torch.arange(frame.size)
    value = node["value"]
    shape = biject_to(fn.support).inv(value).shape
    uevent = fn.event_dim + len(shape) - value.dim()
    idx = len(shape) - uevent + frame.dim
    if idx < 0 or shape[idx] != frame.size or any(n != 1 for n in shape[:idx]):
        raise ValueError(f"{who}: site {site!r} has value of shape {tuple(value.shape)} (event dim "
                         f"{fn.event_dim}); expected {frame.size} data points at plate {plate!r}'s dim "
                         f"{frame.dim} and nothing left of it")
    point = shape[idx + 1:]
    if any(n != 1 for n in point[:len(point) - uevent]):
        raise NotImplementedError(f"{who}: site {site!r} has batch shape {tuple(fn.batch_shape)} per data "
                                  "point; declare its per-point dims as event dims (.to_event())")
    return LocalLayout(site, plate, frame.dim, int(frame.size), int(frame.full_size or frame.size),
                       indices, point, fn.support, fn.event_dim, max_plate_nesting(trace))


def _check_site(s: dict, site: str, plate: str, dim: int, who: str) -> None:
    name, stack = s["name"], s["cond_indep_stack"]
    if plate not in [f.name for f in stack]:
        if not s["is_observed"]:
            raise NotImplementedError(
                f"{who}: latent site {name!r} is outside plate {plate!r}: a global latent. {who} amortizes "
                f"local latents only. What works: make {name!r} a parameter (pyro.param, or the weights of "
                "a pyro.module) and fit it by SVI with this guide, as a VAE's decoder weights are. What does "
                "not: hiding it with poutine.block (the model would redraw it from its prior in every "
                "energy evaluation: wrong weights), or AutoGuideList (its parts cannot pass one part's "
                f"draw of {name!r} to another)")
        raise ValueError(f"{who}: observed site {name!r} is outside plate {plate!r}; the log joint must "
                         "split over data points, so every sample site must be inside that plate")
    if not s["is_observed"] and name != site:
        raise NotImplementedError(f"{who}: the model has latent sites {name!r} and {site!r} in plate "
                                  f"{plate!r}; it handles one local latent site: concatenate them into one")
    for f in stack:
        if f.name == plate:
            continue
        if not f.vectorized:
            raise NotImplementedError(f"{who}: site {name!r} is in the sequential plate {f.name!r}")
        if f.dim < dim:
            raise NotImplementedError(f"{who}: plate {f.name!r} (dim {f.dim}) encloses plate {plate!r} "
                                      f"(dim {dim}); the data plate must be the outermost")
        sub = subsampling(f)
        if sub is not None:
            raise NotImplementedError(f"{who}: site {name!r} is in the subsampled plate {f.name!r}; only the "
                                      f"data plate {plate!r} may subsample")


def per_point_sum(t: Tensor, n: int, b: int, pdim: int, ddim: int, name: str = "") -> Tensor:
    """A site's log-density ``t`` summed over every dim but the particle dim ``pdim`` and the data
    plate's dim ``ddim``; shape ``(n, b)``."""
    k = -pdim
    if t.dim() > k:
        raise ValueError(f"site {name!r} has log_prob of shape {tuple(t.shape)}, with dims left of the "
                         f"particle dim {pdim}: the model does not broadcast over a batch of latent values")
    t = t.reshape((1,) * (k - t.dim()) + tuple(t.shape))
    keep = (0, k + ddim)
    other = [d for d in range(k) if d not in keep]
    rows = t.sum(other) if other else t
    return rows.expand(n, b)


class _LocalScore(_ScoreMessenger):
    """:class:`~pyro_snf.infer.potential._ScoreMessenger` that keeps the data plate's dim, holds the plate
    to the layout's subsample and undoes the plate's ``N / B`` scale."""

    def __init__(self, values: dict[str, Tensor], layout: LocalLayout, n: int, pdim: int, like: Tensor,
                 nonfinite_obs: dict[str, tuple[Tensor, bool]]) -> None:
        super().__init__(values, n, pdim, like, nonfinite_obs)
        self.layout = layout
        self.log_p = like.new_zeros(n, layout.size)

    def _process_message(self, msg: Any) -> None:
        super()._process_message(msg)
        if msg["type"] == "sample" and site_is_subsample(msg) and msg["name"] == self.layout.plate:
            msg["value"] = self.layout.indices

    def _postprocess_message(self, msg: Any) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg) or msg["infer"].get("_do_not_score"):
            return
        value = msg["value"]
        if msg["name"] not in self.values and _has_nonfinite(self.nonfinite_obs, msg["name"], value):
            value = _fill_masked(msg["fn"], msg["mask"], value)
        lp = msg["fn"].log_prob(value, *msg["args"], **msg["kwargs"])
        lp = scale_and_mask(lp, msg["scale"] / self.layout.plate_scale, msg["mask"])
        lp = torch.as_tensor(lp, dtype=self.log_p.dtype, device=self.log_p.device)
        self.log_p = self.log_p + per_point_sum(lp, self.n, self.layout.size, self.dim, self.layout.dim,
                                                msg["name"])


class LocalLogJoint:
    """``l_i(y) = log p(x_i, T(y_i)) + log|det J_T(y_i)|`` per data point (module docstring), for ``y``
    of shape ``(..., B, D)``; returns shape ``(..., B)``. One model call per evaluation."""

    def __init__(self, model: Callable, layout: LocalLayout, args: tuple, kwargs: dict) -> None:
        self.model, self.layout, self.args, self.kwargs = model, layout, tuple(args), dict(kwargs)
        self.transform = biject_to(layout.support)
        inner = self.transform
        while isinstance(inner, IndependentTransform):
            inner = inner.base_transform
        self._identity = isinstance(inner, ComposeTransform) and not inner.parts  # real support
        self._nonfinite_obs: dict[str, tuple[Tensor, bool]] = {}

    def constrain(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(T(y), log|det J_T(y)|)``: values of shape ``(n, B) + point shape`` (constrained) and the
        per-point log-determinant of shape ``(n, B)``, for ``y`` of shape ``(n, B, D)``."""
        n, b = y.shape[0], self.layout.size
        u = y.reshape((n, b) + tuple(self.layout.point_shape))
        if self._identity:
            return u, y.new_zeros(n, b)
        v = self.transform(u)
        ladj = self.transform.log_abs_det_jacobian(u, v)
        return v, ladj.reshape(n, b, -1).sum(-1)

    def __call__(self, y: Tensor) -> Tensor:
        lay = self.layout
        if y.dim() < 2 or y.shape[-2:] != (lay.size, lay.latent_dim):
            raise ValueError(f"expected latents of shape (..., {lay.size}, {lay.latent_dim}), "
                             f"got {tuple(y.shape)}")
        flat = y.reshape(-1, lay.size, lay.latent_dim)
        n = flat.shape[0]
        pdim = particle_dim(lay.max_plate_nesting)
        value, ladj = self.constrain(flat)
        value = value.reshape((n,) + (1,) * (-pdim + lay.dim - 1) + tuple(value.shape[1:]))
        scorer = _LocalScore({lay.site: value}, lay, n, pdim, flat, self._nonfinite_obs)
        with pyro.validation_enabled(False), scorer, pyro.plate(_PLATE, n, dim=pdim):
            self.model(*self.args, **self.kwargs)
        return (scorer.log_p + ladj).reshape(y.shape[:-1])


@contextmanager
def not_adapting(block: StochasticBlock) -> Iterator[None]:
    """Within this context ``block`` does not adapt its step size, even inside its ``adapting()``."""
    previous, block._adapt_now = block._adapt_now, False
    try:
        yield
    finally:
        block._adapt_now = previous
