"""The one adapter between pyro_snf and ArviZ 0.x / 1.x.

Two things differ between the major versions and are wrapped here:

- **PSIS k-hat.** The Pareto shape :math:`\\hat k` of the upper tail of the importance weights
  (Vehtari et al., *Pareto smoothed importance sampling*, JMLR 2024). ArviZ 0.x
  ``az.psislw(log_w)`` takes the raw log-weights; ArviZ 1.x
  ``arviz_stats.base.array_stats.psislw(-log_w, r_eff=1.0)`` takes them *negated* (it is written
  for log-likelihoods in PSIS-LOO; raw log-weights give a meaningless k near -1), and 1.x
  ``pareto_khat(..., log_weights=True)`` is a different statistic. :func:`psis_khat` hides this.
- **Conversion.** 0.x ``az.from_dict(posterior=..., sample_stats=...)`` returns an
  ``InferenceData``; 1.x ``az.from_dict({"posterior": ..., "sample_stats": ...})`` returns an
  ``xarray.DataTree``. :func:`from_dict` takes the groups as one mapping and calls the right one.

Reading :math:`\\hat k` (:func:`khat_verdict`): below 0.5 the weights have finite variance and the
estimates converge at the usual rate; 0.5 to 0.7 the variance is infinite but PSIS-smoothed
estimates are still usable; above 0.7 importance-sampling estimates (log evidence included) are
unreliable; above 1 not even the mean of the weights exists in practice.

What :math:`\\hat k` can see: heavy-tailed weights, i.e. a proposal too narrow or misplaced *where it
has mass*. What it cannot see: posterior mass the proposal never visits (a second mode, a far
region). The weights are then light-tailed and :math:`\\hat k` is small, the ESS high, and the log
evidence is low by the missing mass (a guide on one of two equal modes: :math:`\\hat k` at most
about 0.1, ESS near 100%, log Z low by log 2, no warning). Check that with independent runs from different
initialisations (log evidences that disagree beyond their standard errors), multi-start optimisation,
or a wider or prior-based proposal.

ArviZ is imported lazily (on first use), with its 0.x refactoring ``FutureWarning`` silenced.

Example::

    >>> import numpy as np
    >>> k = psis_khat(np.random.default_rng(0).normal(size=4000))   # log-normal weights
    >>> bool(k < 0.5), khat_verdict(0.8).split(":")[0]
    (True, 'unreliable')
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Below this many particles the Pareto tail cannot be fitted; :func:`psis_khat` returns NaN.
MIN_PSIS_SAMPLES = 50

#: k-hat above this: importance-sampling estimates are unreliable (``importance_sample`` warns).
KHAT_THRESHOLD = 0.7


@functools.lru_cache(maxsize=1)
def _arviz() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def arviz_major_version() -> int:
    """Major version of the installed ArviZ (raises ``ImportError`` if it is missing)."""
    return int(str(_arviz().__version__).split(".")[0])


def psis_khat(log_weights: Any) -> float:
    """Pareto-smoothed importance sampling shape :math:`\\hat k` of raw log importance weights.

    :param log_weights: 1-d array or tensor of ``log w``; ``-inf`` (zero weight) is allowed.
    :returns: ``k-hat`` as a float; ``nan`` for fewer than :data:`MIN_PSIS_SAMPLES` weights,
        ``inf`` when every weight is zero or the tail is too short to fit.
    """
    lw = np.asarray(_to_numpy(log_weights), dtype=np.float64).reshape(-1)
    if lw.size < MIN_PSIS_SAMPLES:
        return math.nan
    if np.isnan(lw).any() or (lw == np.inf).any():
        raise ValueError("log_weights contain NaN or +inf; sanitise them first (pyro_snf.weights)")
    if not np.isfinite(lw).any():
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if arviz_major_version() >= 1:
            from arviz_stats.base import array_stats

            _, khat = array_stats.psislw(-lw, r_eff=1.0)
        else:
            _, khat = _arviz().psislw(lw.copy(), reff=1.0)
    return float(np.asarray(khat).reshape(()))


def khat_verdict(khat: float) -> str:
    """A short reading of a PSIS k-hat value, e.g. ``"good: ..."``: the tail of the weights, over the
    region the proposal visits (a small k-hat says nothing about modes it never visits)."""
    if math.isnan(khat):
        return f"not computed: PSIS needs at least {MIN_PSIS_SAMPLES} samples"
    if khat < 0.5:
        return "good: light-tailed weights where the guide has mass (k < 0.5); blind to modes it never visits"
    if khat <= KHAT_THRESHOLD:
        return "ok: heavy-tailed weights, estimates usable but converge slowly (0.5 <= k <= 0.7)"
    if khat <= 1.0:
        return "unreliable: importance estimates cannot be trusted (k > 0.7)"
    return "unreliable: weight variance infinite, the mean of the weights may not exist (k > 1)"


def from_dict(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    *,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Build ArviZ data from ``{"posterior": {var: array}, "sample_stats": {...}, ...}``.

    Arrays have leading ``(chain, draw)`` axes; ``dims`` names the remaining axes per variable;
    ``attrs`` (plain scalars / strings) are attached to every group.
    Returns an ``InferenceData`` (ArviZ 0.x) or an ``xarray.DataTree`` (ArviZ 1.x).
    """
    az = _arviz()
    coords = dict(coords or {})
    dims = dict(dims or {})
    attrs = dict(attrs or {})
    if arviz_major_version() >= 1:
        return az.from_dict(
            {name: dict(group) for name, group in groups.items()},
            coords=coords,
            dims=dims,
            attrs={name: attrs for name in groups},
        )
    group_attrs = {f"{name}_attrs": attrs for name in groups}  # 0.x: `attrs` is InferenceData-level
    return az.from_dict(**{name: dict(group) for name, group in groups.items()},
                        coords=coords, dims=dims, attrs=attrs, **group_attrs)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x)
