"""Importance sampling of an unnormalised Pyro model with any Pyro guide.

For a model :math:`p(x, z)` with observed data :math:`x` and a guide :math:`q(z)` (any Pyro guide:
an autoguide, a hand-written one, or ``AutoSNF``), draw :math:`z_i \\sim q` and weight

.. math::

    \\log w_i = \\log p(x, z_i) - \\log q(z_i), \\qquad
    \\mathbb E_q[w] = p(x) = Z, \\qquad \\log \\hat Z = \\log \\frac1n \\sum_i w_i .

:math:`\\log q` is the density of the *whole* guide trace: auxiliary sites and factor sites
included. That is how guides on an extended space enter, e.g. an SNF guide whose trace holds a base
sample :math:`z_0` (auxiliary), ``pyro.factor(-sum dS)`` and ``Delta`` sites for the latents, so
that :math:`\\log q = \\log q_0(z_0) - \\sum_t \\Delta S_t` is its path log-density and
:math:`\\mathbb E[w] = Z` still holds. :math:`\\log p` sums every model sample site (observed,
latent, ``pyro.factor``) with Pyro's scale and mask, except latent sites that the guide does not
sample: those are drawn from the model's own prior, which then belongs to the proposal and cancels.

The model and the guide run once per batch, vectorised under an outer ``pyro.plate`` of size
``batch_size`` placed left of every model plate (as Pyro's ``vectorize_particles``): the model
must be vectorisable that way (no shape asserts on latents, broadcasting arithmetic). Plates that
subsample data are refused: the weights of a subsampled likelihood are not posterior weights.

Numbers (log evidence, standard error, ESS, resampling) come from
:class:`pyro_snf.weights.ImportanceWeights`; PSIS k-hat from ArviZ
(:mod:`pyro_snf.diagnostics.arviz_compat`). See :class:`~pyro_snf.infer.result.ImportanceResult`.

Example (normal model with known noise; exact ``log p(x)`` from the marginal Gaussian)::

    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro.infer.autoguide import AutoNormal
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> y = torch.tensor([0.3, 1.1, 0.7])
    >>> exact = dist.MultivariateNormal(torch.zeros(3), torch.eye(3) + 1.0).log_prob(y)
    >>> pyro.set_rng_seed(0)
    >>> res = importance_sample(model, AutoNormal(model, init_scale=0.6), y, num_samples=4000)
    >>> abs(res.log_evidence - float(exact)) < 4 * res.log_evidence_stderr + 0.01, res.khat < 0.7
    (True, True)
    >>> res.samples["mu"].shape, res.resample(500)["mu"].shape
    (torch.Size([4000]), torch.Size([500]))
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_snf.diagnostics.arviz_compat import KHAT_THRESHOLD, MIN_PSIS_SAMPLES, khat_verdict, psis_khat
from pyro_snf.infer.result import ImportanceResult, SiteInfo
from pyro_snf.infer.tracing import check_no_subsampling, check_observed_finite, per_particle_sum, sample_sites
from pyro_snf.infer.tracing import max_plate_nesting as plate_nesting  # the argument has that name
from pyro_snf.weights import sanitize_log_weights

__all__ = ["importance_sample", "ImportanceResult"]

#: Tensor elements (values and log-densities of all sites, all particles) allowed per batch when
#: ``batch_size`` is not given.
DEFAULT_ELEMENT_BUDGET = 2**22
_PARTICLE_PLATE = "_pyro_snf_importance_particles"


def importance_sample(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 10_000,
    batch_size: int | None = None,
    max_plate_nesting: int | None = None,
    no_grad: bool = True,
    warn: bool = True,
    **kwargs: Any,
) -> ImportanceResult:
    """Draw ``num_samples`` particles from ``guide`` and weight them against ``model``.

    :param model: a Pyro model; ``*args, **kwargs`` are passed to it and to the guide.
    :param guide: any Pyro guide for ``model``.
    :param num_samples: number of particles (> 0).
    :param batch_size: particles per vectorised run; default: as many as fit in
        :data:`DEFAULT_ELEMENT_BUDGET` tensor elements. Results are concatenated.
    :param max_plate_nesting: the model's plate nesting; inferred from a probe run if omitted.
    :param no_grad: run guide and model under ``torch.no_grad()`` (guides that need forces enable
        grad themselves).
    :param warn: warn about zero-weight particles, prior-drawn sites, k-hat > 0.7, and k-hat not
        computed (``nan``: fewer than :data:`~pyro_snf.diagnostics.arviz_compat.MIN_PSIS_SAMPLES` samples).
    :returns: an :class:`~pyro_snf.infer.result.ImportanceResult`.
    :raises ValueError: for ``num_samples <= 0``, ``batch_size <= 0``, a subsampling plate, a
        point-mass guide (``AutoDelta``), or observed data with NaN/inf entries that no mask excludes.

    The keyword names above are taken by this function: a model keyword argument with one of
    these names cannot be passed through (wrap the model in a closure instead).
    """
    num_samples = _positive_int(num_samples, "num_samples")
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    grad_ctx = torch.no_grad if no_grad else contextlib.nullcontext
    with grad_ctx():
        guide_tr, model_tr = _run(model, guide, args, kwargs, None, 0)
    check_observed_finite(model_tr, "importance_sample")
    _check_guide_has_density(guide_tr)
    nesting = plate_nesting(guide_tr, model_tr, batch_ranks=False, plate_sites=True)
    if max_plate_nesting is not None:
        nesting = max(nesting, int(max_plate_nesting))
    sites = _site_infos(guide_tr, model_tr)
    prior_sites = tuple(name for name, info in sites.items() if not info.in_guide and not info.deterministic)
    if prior_sites and warn:
        warnings.warn(
            f"latent site(s) {list(prior_sites)} are not sampled by the guide: they are drawn from the "
            "model's prior, which becomes part of the proposal (their prior density cancels in the weights)",
            UserWarning,
            stacklevel=2,
        )
    if batch_size is None:
        per_particle = sum(
            site["value"].numel() * 2 for tr in (guide_tr, model_tr) for site in sample_sites(tr)
        )
        batch_size = max(1, min(num_samples, DEFAULT_ELEMENT_BUDGET // max(per_particle, 1)))

    log_p, log_q, values = [], [], {name: [] for name in sites}
    with grad_ctx():
        for start in range(0, num_samples, batch_size):
            b = min(batch_size, num_samples - start)
            g_tr, m_tr = _run(model, guide, args, kwargs, b, nesting)
            log_p.append(_log_density(m_tr, b, nesting, skip=set(prior_sites)))
            log_q.append(_log_density(g_tr, b, nesting, skip=set()))
            for name, info in sites.items():
                values[name].append(_per_particle_value(m_tr.nodes[name]["value"], b, info.shape, name))
    lp, lq = torch.cat(log_p).detach(), torch.cat(log_q).detach()
    raw = lp - lq
    invalid = torch.isnan(raw) | (raw == math.inf) | torch.isnan(lp) | (lp == math.inf) | ~torch.isfinite(lq)
    num_nonfinite = int(invalid.sum())  # log p = -inf (outside the support) is a legitimate zero weight
    log_w = sanitize_log_weights(raw, warn=warn, what="importance samples", stacklevel=3)
    khat = psis_khat(log_w)
    if warn and khat > KHAT_THRESHOLD and bool(torch.isfinite(log_w).any()):
        warnings.warn(
            f"PSIS k-hat = {khat:.2f} > {KHAT_THRESHOLD}: {khat_verdict(khat)}. The weights are heavy-"
            "tailed: where the guide has mass it is too narrow or misplaced, and the log evidence and "
            "posterior estimates from these weights are not trustworthy (k-hat cannot see posterior mass "
            "the guide never visits: a small k-hat does not rule that out)",
            UserWarning,
            stacklevel=2,
        )
    if warn and math.isnan(khat) and num_samples < MIN_PSIS_SAMPLES:
        warnings.warn(
            f"PSIS k-hat is NaN: num_samples = {num_samples} < {MIN_PSIS_SAMPLES}, the minimum PSIS needs "
            f"to fit the tail of the weights. Draw at least {MIN_PSIS_SAMPLES} samples to check the "
            "weights (and the log evidence) with k-hat",
            UserWarning,
            stacklevel=2,
        )
    return ImportanceResult(
        log_weights=log_w,
        samples={name: torch.cat(v).detach() for name, v in values.items()},
        khat=khat,
        num_nonfinite=num_nonfinite,
        log_model=lp,
        log_guide=lq,
        sites=sites,
        prior_sites=prior_sites,
    )


# -- tracing ------------------------------------------------------------------------------------
def _run(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    batch: int | None,
    nesting: int,
) -> tuple[Trace, Trace]:
    """Trace the guide, then the model replayed on it; vectorised when ``batch`` is given."""
    if batch is not None:
        model, guide = _vectorize(model, batch, nesting), _vectorize(guide, batch, nesting)
    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
    check_no_subsampling(guide_tr, "guide")
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    check_no_subsampling(model_tr, "model")
    return guide_tr, model_tr


def _vectorize(fn: Callable[..., Any], batch: int, nesting: int) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(_PARTICLE_PLATE, batch, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return wrapped


def _check_guide_has_density(guide_tr: Trace) -> None:
    """Refuse point-mass guides (AutoDelta): their log q is 0 and the weights are meaningless."""
    sites = sample_sites(guide_tr)
    latent = [s for s in sites if not s["is_observed"] and not s["infer"].get("is_auxiliary", False)]
    if len(latent) < len(sites) or not latent:  # auxiliary or factor sites carry the density
        return
    if all(isinstance(_unwrap(s["fn"]), dist.Delta) for s in latent):
        raise ValueError(
            "the guide is a point mass (only Delta sites, e.g. AutoDelta): it has no density to "
            "importance-sample with; use a guide with a proper density (AutoNormal, "
            "AutoMultivariateNormal, AutoIAFNormal, AutoSNF, ...)"
        )


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def _site_infos(guide_tr: Trace, model_tr: Trace) -> dict[str, SiteInfo]:
    """Latent and deterministic model sites, with shapes and plate names (from the probe run)."""
    infos = {}
    for site in sample_sites(model_tr):
        name = site["name"]
        deterministic = bool(site["infer"].get("_deterministic", False))
        if site["is_observed"] and not deterministic:
            continue
        plates = {frame.dim: frame.name for frame in site["cond_indep_stack"] if frame.vectorized}
        infos[name] = SiteInfo(
            shape=tuple(site["value"].shape),
            event_dim=int(getattr(site["fn"], "event_dim", 0)),
            plates=plates,
            in_guide=name in guide_tr.nodes,
            deterministic=deterministic,
        )
    return infos


# -- per-particle reductions -------------------------------------------------------------------
def _log_density(tr: Trace, batch: int, nesting: int, skip: set[str]) -> Tensor:
    """Sum of the (scaled, masked) log-densities of all sample sites, one number per particle."""
    tr.compute_log_prob(site_filter=lambda name, site: name not in skip and not site_is_subsample(site))
    total: Tensor | float = 0.0
    for site in sample_sites(tr):
        if site["name"] in skip:
            continue
        lp = torch.as_tensor(site["log_prob"])  # dims left of the particle dim are summed too
        total = total + per_particle_sum(lp, batch, -(nesting + 1), site["name"], sum_left=True)
    if isinstance(total, float):
        return torch.zeros(batch)
    return total


def _per_particle_value(value: Tensor, batch: int, shape: tuple[int, ...], name: str) -> Tensor:
    n_site = math.prod(shape)
    value = torch.as_tensor(value)
    if value.numel() == batch * n_site:
        return value.reshape((batch, *shape))
    if value.numel() == n_site:
        return value.reshape(shape).expand((batch, *shape))
    raise ValueError(
        f"site {name!r} has shape {tuple(value.shape)} in a vectorised run of {batch} particles but "
        f"shape {shape} alone; is the model vectorisable under an outer plate?"
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
