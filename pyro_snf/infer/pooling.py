"""Pooling two independent importance samplers of the same posterior: ``sample_posterior``'s guides
and its prior draws.

With independent estimates ``Zhat_g`` (``n_g`` guide draws, weights ``w_i``) and ``Zhat_p`` (``n_p``
prior draws, weights ``v_j = p(y | x_j)``), each unbiased for ``Z``, any fixed ``lambda in [0, 1]``
gives the unbiased ``lambda Zhat_g + (1 - lambda) Zhat_p``: the pooled draws carry the weights
``lambda w_i n / n_g`` and ``(1 - lambda) v_j n / n_p`` (``n = n_g + n_p``), whose mean is that
combination, so self-normalised expectations over the pooled draws are consistent.

``lambda`` minimises the variance of the combination, ``lambda = V_p / (V_g + V_p)`` with
``V = (Zhat SE_log)^2``, among the *reliable* samplers only: PSIS k-hat <= 0.7 and an ESS of at least
20. An unreliable sampler gets ``lambda = 0`` (its standard error cannot be trusted, so neither can a
weight computed from it); if none is reliable the guides are kept alone. A reliable sampler whose log
evidence is over 4 combined SEs below another's gets no share either: both are unbiased in ``Z``, and
importance sampling that misses mass (a banana's arm the guides never reach) errs low, with weights
that look fine. The same holds for more than
two samplers (``sample_posterior`` may add a non-centred run of the guides): shares ``1 / V_k``,
normalised, over the reliable ones. ``lambda`` is estimated
from the same draws, so the pooled estimate is consistent, not exactly unbiased (the effect is of the
order of the SE's own error, far below the SE).

Why it matters: the prior is a poor proposal when the data are informative, but it covers every mode
and every funnel neck, where the guides (one per Laplace mode) can fail; and its draws are already
made for the prior check, so pooling costs nothing.
"""

from __future__ import annotations

import math

import torch

from pyro_snf.diagnostics.arviz_compat import KHAT_THRESHOLD, psis_khat
from pyro_snf.infer.result import ImportanceResult

__all__ = ["pool", "reliable"]

MIN_ESS = 20.0


def reliable(res: ImportanceResult) -> bool:
    """k-hat <= 0.7 (finite) and ESS >= 20: the sampler's SE can be used to weigh it."""
    return math.isfinite(res.log_evidence) and res.khat <= KHAT_THRESHOLD and res.ess >= MIN_ESS


def _below(r: ImportanceResult, q: ImportanceResult) -> bool:
    """``r``'s log evidence is over 4 combined SEs below ``q``'s: ``r`` misses mass that ``q`` sees."""
    return q.log_evidence - r.log_evidence > 4 * math.hypot(r.log_evidence_stderr, q.log_evidence_stderr)


def pool(runs: list[ImportanceResult], prior: ImportanceResult | None,
         min_gain: float = 0.05) -> ImportanceResult:
    """The pooled result of the guides' ``runs`` (one, or a centred and a non-centred one) and the prior
    draws; ``runs[0]`` itself when nothing else is reliable or pooling would cut the variance by under
    ``min_gain`` (``runs[0]``'s share ``> 1 - min_gain``).

    The result keeps ``runs[0]``'s ``modes`` and ``prior_log_evidence``, the ``warnings`` of every run
    (plus one saying what it pooled, with the shares) and the samples of the sites all pooled parts
    hold (constrained latents and deterministic sites of the original model).
    """
    parts = [r for r in runs + ([prior] if prior is not None else []) if reliable(r)]
    parts = [r for r in parts if not any(_below(r, q) for q in parts)]
    labels = [f"guides {i}" if len(runs) > 1 else "guides" for i in range(len(runs))] + ["prior draws"]
    first = runs[0]
    warns = [w for r in runs for w in r.warnings]
    if not parts or (len(parts) == 1 and parts[0] is first):
        first.warnings = warns
        return first
    var = [math.exp(2 * r.log_evidence) * r.log_evidence_stderr ** 2 for r in parts]
    if any(v == 0 for v in var):
        lam = [1.0 if v == 0 else 0.0 for v in var]
    else:
        lam = [1 / v for v in var]
    lam = [v / sum(lam) for v in lam]
    if parts[0] is first and lam[0] > 1.0 - min_gain:
        first.warnings = warns
        return first
    n = sum(r.num_samples for r in parts)
    names = set.intersection(*(set(r.samples) for r in parts))
    log_w = torch.cat([torch.nan_to_num(r.log_weights.detach().double(), nan=-math.inf)
                       + (math.log(share * n / r.num_samples) if share > 0 else -math.inf)
                       for r, share in zip(parts, lam)])
    ref = parts[0].samples
    samples = {k: torch.cat([r.samples[k].detach().to(ref[k]) for r in parts]) for k in ref if k in names}
    sites = {k: v for r in reversed(parts) for k, v in r.sites.items() if k in samples}
    out = ImportanceResult(log_weights=log_w.to(first.log_weights.dtype), samples=samples,
                           khat=psis_khat(log_w), num_nonfinite=sum(r.num_nonfinite for r in parts),
                           sites=sites)
    out.modes, out.prior_log_evidence = first.modes, first.prior_log_evidence
    everyone = [*runs, prior]
    shares = ", ".join(f"{labels[next(i for i, e in enumerate(everyone) if e is r)]} {share:.3g}"
                       for r, share in zip(parts, lam))
    out.warnings = [*warns, f"the result pools the reliable samplers (k-hat <= {KHAT_THRESHOLD}, ESS >= "
                    f"{MIN_ESS:.0f}) by inverse variance: shares of the evidence {shares}; pooled k-hat "
                    f"{out.khat:.2f} (see pyro_snf.infer.pooling)"]
    return out
