"""The checks of :func:`~pyro_snf.infer.sample_posterior` (see its module docstring for what they can
and cannot see) and the prior draws they compare against."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from torch import Tensor

from pyro_snf.diagnostics.arviz_compat import KHAT_THRESHOLD
from pyro_snf.infer import multistart as ms
from pyro_snf.infer.importance import importance_sample
from pyro_snf.infer.potential import ModelPotential
from pyro_snf.infer.result import ImportanceResult, SiteInfo
from pyro_snf.weights import ImportanceWeights

__all__ = ["checks", "prior_draws", "fmt"]


def checks(pot: ModelPotential, sites: dict[str, SiteInfo], modes: list[ms.Mode], counts: list[int],
            res: ImportanceResult, x: Tensor, prior: ImportanceResult | None) -> list[str]:
    notes, n, where = [], res.num_samples, lambda m: fmt(pot, sites, m.loc)
    if res.khat > KHAT_THRESHOLD:
        notes.append(f"PSIS k-hat of the guides' weights = {res.khat:.2f} > {KHAT_THRESHOLD}: heavy-tailed; "
                     "the guides under-cover posterior mass and their estimates are not trustworthy")
    elif res.khat > 0.5:
        notes.append(f"PSIS k-hat = {res.khat:.2f} in (0.5, {KHAT_THRESHOLD}]: heavy-tailed weights, so the "
                     "standard error (computed from the same weights) is optimistic: estimates several SEs "
                     "off are common; trust the evidence to a few SEs, or draw more / train longer")
    alive = bool(torch.isfinite(res.log_weights).any())
    draws = x[res.resample_indices(min(n, 4000))] if alive else x[:0]
    radius, frac, start, res.modes = math.sqrt(ms.chi2_quantile(pot.dim)), ms.mass_fractions(modes), 0, []
    for k, (mode, n_k) in enumerate(zip(modes, counts)):
        lw = res.log_weights[start:start + n_k]
        start += n_k
        outside = float((lw == -math.inf).float().mean())
        iw = ImportanceWeights(lw - math.log(n / n_k))
        share = float((torch.logsumexp(lw, 0) - torch.logsumexp(res.log_weights, 0)).exp()) if alive else 0.0
        res.modes.append({"loc": constrained(pot, sites, mode.loc), "laplace_log_mass": mode.log_mass,
                          "log_evidence": float(iw.log_evidence), "num_samples": n_k,
                          "log_evidence_stderr": float(iw.log_evidence_stderr), "fraction_outside": outside,
                          "num_starts": mode.count})
        if outside > 0.5:
            notes.append(f"{100 * outside:.0f}% of the draws of the guide started at the mode at "
                         f"{where(mode)} fall in other modes' regions: it drifted away from its mode")
        near = bool((mode.mahalanobis(draws) < radius).any())
        if frac[k] >= 0.01 and share < 0.1 * frac[k] and not near:
            notes.append(f"the guide may miss a mode at {where(mode)} (Laplace mass fraction "
                         f"{frac[k]:.3f}, weighted draws {share:.3g}, no resampled draw near it)")
    halves = [ImportanceWeights(res.log_weights[i::2]) for i in (0, 1)]
    diff = abs(float(halves[0].log_evidence - halves[1].log_evidence))
    se = math.hypot(float(halves[0].log_evidence_stderr), float(halves[1].log_evidence_stderr))
    if diff > 4 * se:
        notes.append(f"the two halves of the particles disagree on the log evidence by {diff:.3g} "
                     f"(> 4 combined standard errors, {se:.3g}): the weights are unreliable")
    res.prior_log_evidence = None
    if prior is not None:
        res.prior_log_evidence = (prior.log_evidence, prior.log_evidence_stderr, prior.ess)
        (value, se_p, ess), z, se_z = res.prior_log_evidence, res.log_evidence, res.log_evidence_stderr
        if ess >= 5 and value - z > 4 * math.hypot(se_p, se_z):
            xp = ms.pack(pot, prior.samples, prior.num_samples)  # the heaviest prior draw away from all modes
            far = torch.stack([m.mahalanobis(xp) for m in modes]).min(0).values > radius
            lw = torch.where(far, prior.log_weights, torch.full_like(prior.log_weights, -math.inf))
            at = f" (its heaviest draw away from the modes found: {fmt(pot, sites, xp[lw.argmax()])})" \
                if bool(far.any()) else ""
            notes.append(f"importance sampling from the prior gives log evidence {value:.3f} +- {se_p:.3f}, "
                         f"{value - z:.3f} above the guides' {z:.3f} +- {se_z:.3f}: the guides miss "
                         f"posterior mass, a mode the multi-start did not find?{at}")
    return notes


def prior_draws(model: Callable, args: tuple, kwargs: dict, num: int) -> ImportanceResult | None:
    """Importance sampling with the prior as the proposal. Validation is off, as inside
    :class:`~pyro_snf.infer.potential.ModelPotential`: a prior draw that makes a distribution's
    parameters invalid (e.g. an AR(1) path drawn with ``|phi|`` near 1 overflowing to NaN) gets zero
    weight instead of stopping the whole fit."""
    if num <= 0:
        return None
    prior = poutine.block(model, hide_fn=lambda msg: msg["type"] == "sample" and msg["is_observed"])
    with warnings.catch_warnings(), pyro.validation_enabled(False):
        warnings.simplefilter("ignore")
        r = importance_sample(model, prior, *args, num_samples=num, warn=False, **kwargs)
    return r


def constrained(pot: ModelPotential, sites: dict[str, SiteInfo], x: Tensor) -> dict[str, Tensor]:
    values, _ = pot.constrain(x[None])
    return {k: v.reshape(sites[k].shape).detach() for k, v in values.items()}


def fmt(pot: ModelPotential, sites: dict[str, SiteInfo], x: Tensor) -> str:
    items = []
    for name, v in constrained(pot, sites, x).items():
        vals = ", ".join(f"{float(a):.3g}" for a in v.reshape(-1)[:4]) + (", ..." if v.numel() > 4 else "")
        items.append(f"{name}={vals if v.numel() == 1 else '[' + vals + ']'}")
    return ", ".join(items)
