"""Free-energy profiles along a coordinate, and their error against an exact profile.

The profile of samples ``x1`` with importance weights ``w`` on bins ``b`` is
``F(b) = -log( sum_{i in b} w_i / (sum_i w_i * width) )`` (kT units, ``+inf`` for empty bins).
The error follows the paper's analysis code (Wu, Köhler & Noé 2020, ``bias_uncertainty``): ``R``
independent sample sets give profiles ``F_r``, each shifted to mean zero over its finite bins;
their mean ``F̄`` and the exact profile are both shifted to minimum zero; on the bins with centres
in ``(-2.25, 2.25)`` where ``F̄`` is finite,

- ``bias = |mean_b (F_exact(b) - F̄(b))|``,
- ``std = mean_b std_r F_r(b)``,
- ``error = sqrt(bias^2 + std^2)``.

The exact profile is the bin average ``-log(∫_b p(x1) dx1 / width)`` (not the energy at the bin
centre), so a perfect sampler has zero bias at any bin width (for the double well:
:func:`pyro_snf.examples.double_well.exact_double_well_profile`).

Example::

    >>> import torch
    >>> from pyro_snf.examples.double_well import exact_double_well_profile
    >>> from pyro_snf.targets import DoubleWell
    >>> _ = torch.manual_seed(0)
    >>> edges = torch.linspace(-3, 3, 31, dtype=torch.float64)
    >>> profiles = torch.stack([histogram_profile(DoubleWell().sample(100_000)[:, 0], edges)
    ...                         for _ in range(5)])
    >>> err = profile_error(profiles, exact_double_well_profile(edges), edges)
    >>> err["error"] < 0.4  # even exact samples score ~0.2-0.3 kT: sparse bins at the barrier
    True
"""

from __future__ import annotations

import torch
from torch import Tensor


def histogram_profile(values: Tensor, edges: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """``-log`` of the (weighted) histogram density on ``edges``; ``+inf`` for empty bins."""
    values = values.detach().to(torch.float64).cpu()
    edges = edges.to(torch.float64).cpu()
    if log_weights is None:
        weights = torch.ones_like(values)
    else:
        lw = log_weights.detach().to(torch.float64).cpu()
        weights = (lw - lw.max()).exp()
    idx = torch.bucketize(values, edges, right=True) - 1
    inside = (idx >= 0) & (idx < edges.numel() - 1)
    mass = torch.zeros(edges.numel() - 1, dtype=torch.float64).index_add_(0, idx[inside], weights[inside])
    density = mass / (weights.sum() * (edges[1:] - edges[:-1]))
    return -density.log()


def profile_error(profiles: Tensor, exact: Tensor, edges: Tensor,
                  window: tuple[float, float] = (-2.25, 2.25)) -> dict[str, float]:
    """Bias, std and ``sqrt(bias^2 + std^2)`` of ``R`` profiles ``(R, num_bins)`` (see module doc)."""
    profiles = profiles.to(torch.float64).clone()
    for r in range(profiles.shape[0]):
        finite = torch.isfinite(profiles[r])
        profiles[r] -= profiles[r][finite].mean()
    mean = profiles.mean(0)  # +inf in a bin that some set left empty
    finite_mean = mean[torch.isfinite(mean)]
    if finite_mean.numel() == 0:
        return {"bias": float("inf"), "std": float("inf"), "error": float("inf"), "num_bins": 0}
    mean = mean - finite_mean.min()
    exact = exact - exact.min()
    centres = 0.5 * (edges[1:] + edges[:-1]).to(torch.float64)
    use = (centres > window[0]) & (centres < window[1]) & torch.isfinite(mean)
    bias = (exact[use] - mean[use]).mean().abs()
    std = profiles[:, use].std(0).mean() if profiles.shape[0] > 1 else torch.zeros((), dtype=torch.float64)
    return {"bias": float(bias), "std": float(std), "error": float((bias**2 + std**2).sqrt()),
            "num_bins": int(use.sum())}
