"""The energy of a Pyro model's posterior in its unconstrained latent space, for many particles at once.

Every continuous latent site ``theta_k`` is mapped to the real space by ``T_k = biject_to(support_k)``;
the flat vector ``x = (x_1, ..., x_K)`` (shape ``(D,)``, the layout of Pyro's
:class:`~pyro.infer.autoguide.AutoContinuous`) has the unnormalised density

.. math::

    -u(x) = \\log p(\\mathrm{data}, T(x)) + \\log|\\det J_T(x)|, \\qquad
    \\int e^{-u(x)}\\, dx = p(\\mathrm{data}),

so ``u`` is the target energy of an SNF and its ``log Z`` is the model's log evidence.
:class:`ModelPotential` evaluates ``u`` for ``x`` of shape ``(..., D)`` in ONE model call: the
particles are flattened to ``(N, D)`` and the model runs under ``poutine.condition`` inside a
``pyro.plate`` of size ``N`` placed left of every model plate (and left of any plate already open,
e.g. Pyro's vectorised-particle plate when a guide calls it). The call is wrapped in
``poutine.block()``: its sites never reach an outer trace, and outer plates or masks do not act on it.
Each site's ``log_prob`` (with its scale and mask) is summed over all non-particle dimensions.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(y):
    ...     sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(0.0, sigma), obs=y)
    >>> u = ModelPotential.from_model(model, torch.randn(10))
    >>> u.dim, u(torch.zeros(5, 3, 1)).shape
    (1, torch.Size([5, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.constraints import Constraint

# trace_model, max_plate_nesting and particle_dim live in tracing and stay importable from here
from pyro_snf.infer.tracing import (
    check_observed_finite,
    check_site_plates,
    max_plate_nesting,
    particle_dim,
    per_particle_sum,
    sample_sites,
    trace_model,
    unmasked_entries,
)

_PLATE = "_pyro_snf_particles"


class LatentSite(NamedTuple):
    """Layout of one latent site inside the flat unconstrained vector."""

    name: str
    support: Constraint
    event_dim: int  #: event dim of the model's distribution (constrained)
    unconstrained_shape: torch.Size  #: shape of ``biject_to(support).inv(value)`` (batch + event)
    unconstrained_event_dim: int

    @property
    def size(self) -> int:
        return math.prod(self.unconstrained_shape)


def check_model_trace(trace: Trace, who: str = "this potential") -> None:
    """Clear errors for what a continuous, full-batch potential cannot handle (observed NaN/inf
    included, see :func:`~pyro_snf.infer.tracing.check_observed_finite`)."""
    check_observed_finite(trace, who)
    for site in sample_sites(trace):
        name = site["name"]
        check_site_plates(site, who)
        if site["is_observed"]:
            continue
        fn = site["fn"]
        if fn.support.is_discrete or site["infer"].get("enumerate"):
            raise NotImplementedError(
                f"latent site '{name}' is discrete ({type(fn).__name__}, support {fn.support}); {who} "
                "works on continuous latents only and does not support enumeration. Marginalise it out "
                f"by hand, or hide it: poutine.block(model, hide=['{name}'])"
            )
    if not any(not s["is_observed"] for s in sample_sites(trace)):
        raise ValueError(f"the model has no latent sample sites; {who} has nothing to infer "
                         "(every site is observed)")


def latent_sites(trace: Trace) -> list[LatentSite]:
    """The continuous latent sites of a trace, in trace order (AutoContinuous's packing order)."""
    sites = []
    for site in sample_sites(trace):
        if site["is_observed"]:
            continue
        value, fn = site["value"], site["fn"]
        shape = biject_to(fn.support).inv(value).shape
        sites.append(LatentSite(site["name"], fn.support, fn.event_dim, shape,
                                fn.event_dim + len(shape) - value.dim()))
    return sites


class _FiniteGrad(torch.autograd.Function):
    """Identity whose backward replaces NaN/inf gradient entries by 0 (by selection, twice differentiable).

    A particle whose log density is not finite (a rejected proposal, say) has NaN partial derivatives
    (``0 * inf``); without this they would reach the shared guide parameters through the batched graph.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))


class _ScoreMessenger(Messenger):
    """Conditions the latents on ``values``, hides every message from outer handlers (as
    ``poutine.block``) and accumulates each scored sample site's log-density per particle."""

    def __init__(self, values: dict[str, Tensor], n: int, dim: int, like: Tensor,
                 nonfinite_obs: dict[str, tuple[Tensor, bool]]) -> None:
        super().__init__()
        self.values, self.n, self.dim, self.nonfinite_obs = values, n, dim, nonfinite_obs
        self.log_p = like.new_zeros(n)

    def _process_message(self, msg: Any) -> None:
        msg["stop"] = True
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        value = self.values.get(msg["name"])
        if value is not None:
            msg["value"], msg["is_observed"] = value, True
        elif not site_is_subsample(msg):
            raise RuntimeError(
                f"the model sampled a latent site '{msg['name']}' that is not in the latent layout "
                f"{sorted(self.values)}; models with a dynamic set of latent sites are not supported"
            )

    def _postprocess_message(self, msg: Any) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg) or msg["infer"].get("_do_not_score"):
            return
        value = msg["value"]
        if msg["name"] not in self.values and _has_nonfinite(self.nonfinite_obs, msg["name"], value):
            value = _fill_masked(msg["fn"], msg["mask"], value)  # masked-out NaN/inf observations
        lp = msg["fn"].log_prob(value, *msg["args"], **msg["kwargs"])
        lp = torch.as_tensor(scale_and_mask(lp, msg["scale"], msg["mask"]), dtype=self.log_p.dtype,
                             device=self.log_p.device)
        self.log_p = self.log_p + per_particle_sum(lp, self.n, self.dim, msg["name"])


def _has_nonfinite(cache: dict[str, tuple[Tensor, bool]], name: str, value: Any) -> bool:
    """Whether an observed value holds NaN/inf, computed once per value object (one host sync), not at
    every energy evaluation."""
    hit = cache.get(name)
    if hit is not None and hit[0] is value:
        return hit[1]
    flag = (torch.is_tensor(value) and value.is_floating_point()
            and bool((~torch.isfinite(value.detach())).any()))
    cache[name] = (value, flag)
    return flag


def _fill_masked(fn: Any, mask: Any, value: Any) -> Any:
    """An observed value whose masked-out NaN/inf events are replaced by a finite event of the same
    value: their log-density is discarded anyway, but a NaN there gives NaN gradients through the mask."""
    if not torch.is_tensor(value) or not value.is_floating_point() or not value.numel():
        return value
    kept = unmasked_entries(fn, mask, value)
    if kept is None:
        return value
    e = min(getattr(fn, "event_dim", 0), value.dim())
    ok, fill = torch.isfinite(value), ~(torch.isfinite(value) | kept)
    if e:  # whole events
        ok, fill = ok.flatten(-e).all(-1), fill.flatten(-e).any(-1)
    donor = value.reshape((-1,) + value.shape[value.dim() - e:])[ok.reshape(-1).long().argmax()]
    return torch.where(fill.reshape(fill.shape + (1,) * e), donor, value)


class ModelPotential:
    """``u(x) = -log p(data, T(x)) - log|det J_T(x)|`` for a Pyro model, vectorised over particles.

    Inside the model call Pyro/torch validation is off: a particle whose proposal makes a
    distribution's parameters invalid gets ``u = +inf`` (zero density) instead of an exception,
    and NaN log densities also become ``+inf``; gradients of such particles are set to 0. Observed
    NaN/inf entries are refused by :meth:`from_model` unless a mask excludes them (then their value
    and gradients are exact: the potential scores a finite stand-in that the mask discards).

    :param model: the Pyro model (observations inside it or passed through ``args``/``kwargs``).
    :param sites: the latent layout, e.g. ``latent_sites(trace)`` of a prior trace.
    :param args, kwargs: the model's arguments.
    :param max_plate_nesting: number of batch dims the model uses (see :func:`max_plate_nesting`).
    """

    def __init__(self, model: Callable, sites: Iterable[LatentSite], args: tuple = (),
                 kwargs: dict | None = None, max_plate_nesting: int = 0) -> None:
        self.model = model
        self.sites = list(sites)
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.max_plate_nesting = int(max_plate_nesting)
        self.dim = sum(site.size for site in self.sites)
        self._transforms = [biject_to(site.support) for site in self.sites]
        self._nonfinite_obs: dict[str, tuple[Tensor, bool]] = {}  # observed site -> (value, has NaN/inf)

    @classmethod
    def from_model(cls, model: Callable, *args: Any, **kwargs: Any) -> ModelPotential:
        """Trace the model once (prior draw), check it, and build its potential."""
        trace = trace_model(model, args, kwargs)
        check_model_trace(trace)
        return cls(model, latent_sites(trace), args, kwargs, max_plate_nesting(trace))

    # -- layout ------------------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"expected unconstrained latents of shape (..., {self.dim}), "
                             f"got {tuple(x.shape)}")
        return x.reshape(-1, self.dim)

    def unpack(self, x: Tensor, batch_dims: int | None = None) -> dict[str, Tensor]:
        """Unconstrained site values from flat ``x`` of shape ``(N, D)``; each has shape
        ``(N,) + (1,) * k + unconstrained_shape``, with ``N`` at dim ``-(batch_dims + 1)``."""
        m = self.max_plate_nesting if batch_dims is None else batch_dims
        n, pos, out = x.shape[0], 0, {}
        for site in self.sites:
            shape = site.unconstrained_shape
            pad = m + site.unconstrained_event_dim - len(shape)
            if pad < 0:
                raise ValueError(f"site '{site.name}' has more batch dims than max_plate_nesting={m}")
            out[site.name] = x[:, pos:pos + site.size].reshape((n,) + (1,) * pad + shape)
            pos += site.size
        return out

    def constrain(self, x: Tensor, batch_dims: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Constrained site values (as :meth:`unpack`) and ``log|det J_T|`` of shape ``(N,)``."""
        values, ladj = {}, x.new_zeros(x.shape[0])
        m = self.max_plate_nesting if batch_dims is None else batch_dims
        unconstrained = self.unpack(x, m)
        for site, transform in zip(self.sites, self._transforms):
            u = unconstrained[site.name]
            v = transform(u)
            values[site.name] = v
            log_det = transform.log_abs_det_jacobian(u, v)  # leading dim: the particles
            ladj = ladj + per_particle_sum(log_det, x.shape[0], -max(log_det.dim(), 1), site.name)
        return values, ladj

    def log_abs_det_constrain(self, x: Tensor) -> Tensor:
        """``log|det J_T(x)|`` for ``x`` of shape ``(..., D)``; shape ``(...)``."""
        flat = self._flat(x)
        return self.constrain(flat)[1].reshape(x.shape[:-1])

    # -- densities -----------------------------------------------------------------------------
    def log_joint(self, x: Tensor) -> Tensor:
        """``log p(data, T(x))`` (without the Jacobian) for ``x`` of shape ``(..., D)``."""
        return self._log_joint_and_ladj(x)[0]

    def _log_joint_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = _FiniteGrad.apply(self._flat(x))
        n = flat.shape[0]
        dim = particle_dim(self.max_plate_nesting)
        values, ladj = self.constrain(flat, -dim - 1)
        scorer = _ScoreMessenger(values, n, dim, flat, self._nonfinite_obs)
        with pyro.validation_enabled(False), scorer, pyro.plate(_PLATE, n, dim=dim):
            self.model(*self.args, **self.kwargs)
        return scorer.log_p.reshape(x.shape[:-1]), ladj.reshape(x.shape[:-1])

    def __call__(self, x: Tensor) -> Tensor:
        """``u(x)`` for ``x`` of shape ``(..., D)``; shape ``(...)``. NaN log densities become ``+inf``."""
        log_p, ladj = self._log_joint_and_ladj(x)
        u = -(log_p + ladj)
        return torch.where(torch.isnan(u), torch.full_like(u, float("inf")), u)
