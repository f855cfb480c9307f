"""Sample-quality metrics of the paper's alanine-dipeptide experiment, against an MD reference.

**Torsion KL (the paper's).** The released notebook (``experiment3_ala2_MC_RNVP.ipynb``) histograms each
torsion on 50 bins of :math:`[-\\pi, \\pi)` as a density (``np.histogram(..., density=True)``), smooths it
by a periodic convolution with the unnormalised kernel ``(0.25, 0.5, 1, 0.5, 0.25)`` (sum 2.5), and reports

.. math::

    \\mathrm{KL}_{\\rm paper} = \\sum_b h^{\\rm MD}_b
    \\log\\frac{h^{\\rm MD}_b + 10^{-5}}{h^{\\rm gen}_b + 10^{-5}}.

It is not normalised: for smooth densities it is about :math:`2.5 \\cdot 50 / (2\\pi) \\approx 19.9` times
the KL of the binned distributions. :func:`torsion_kl` returns it (``"paper"``) and the **normalised** KL
(``"normalised"``): the same smoothed histograms divided by their sums (probabilities :math:`p, q` over the
50 bins), :math:`\\sum_b p_b \\log((p_b + 10^{-5}) / (q_b + 10^{-5}))`. Weighted samples (``log_weights``,
importance log-weights) enter the histogram with weights :math:`w_i \\propto e^{\\log w_i}`.

**Free-energy surface.** :func:`free_energy_2d` is :math:`F = -\\log p` (kT) of the (weighted) 2-D
histogram of :math:`(\\phi, \\psi)` on ``bins x bins`` periodic bins; :func:`surface_rmse` compares two
surfaces on the bins where the reference holds at least ``min_population`` of the mass, after removing
the free additive constant (the mean difference), and counts the bins the sample left empty.

**Populations and weights.** :func:`weighted_fraction` gives a weighted fraction with its delta-method
standard error :math:`\\sqrt{\\sum_i w_i^2 (1_i - p)^2} / \\sum_i w_i`; :func:`block_standard_error` the
standard error of a correlated (MD) time series by block averaging; :func:`weight_summary` Kish's ESS
and :math:`\\log \\hat Z` with its standard error (:class:`pyro_snf.weights.ImportanceWeights`).

Example (identical histograms give zero; weights are used)::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.uniform(-np.pi, np.pi, 5000)
    >>> torsion_kl(a, a)["paper"]
    0.0
    >>> b = np.concatenate([a, a + 1.0])   # half of the mass moved, then weighted away
    >>> lw = np.concatenate([np.zeros(5000), np.full(5000, -np.inf)])
    >>> torsion_kl(a, np.angle(np.exp(1j * b)), log_weights=lw)["normalised"]
    0.0
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from pyro_snf.diagnostics.arviz_compat import psis_khat
from pyro_snf.weights import ImportanceWeights

KERNEL = (0.25, 0.5, 1.0, 0.5, 0.25)
EPS = 1e-5


def _weights(n: int, log_weights) -> np.ndarray:
    if log_weights is None:
        return np.ones(n)
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.shape[0] != n:
        raise ValueError(f"log_weights must have one entry per sample ({n}), got {lw.shape[0]}")
    bad = np.isnan(lw) | (lw == np.inf)
    if bad.any():  # as pyro_snf.weights.sanitize_log_weights: zero weight, said aloud
        warnings.warn(f"{int(bad.sum())} of {n} log-weights are NaN or +inf; they count as zero weight",
                      RuntimeWarning, stacklevel=3)
        lw = np.where(bad, -np.inf, lw)
    if not np.isfinite(lw).any():
        raise ValueError("every log-weight is -inf (or non-finite): no sample carries weight")
    return np.exp(lw - lw.max())


def periodic_smooth(h: np.ndarray, kernel=KERNEL) -> np.ndarray:
    """Periodic convolution of ``h`` (last axis) with ``kernel`` (odd length), as the paper's notebook."""
    h = np.asarray(h, dtype=np.float64)
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 1 or len(k) % 2 == 0:
        raise ValueError(f"kernel must be 1-d of odd length, got shape {k.shape}")
    half = len(k) // 2
    return sum(k[j] * np.roll(h, j - half, axis=-1) for j in range(len(k)))


def torsion_histogram(angles, log_weights=None, bins: int = 50, smooth: bool = True) -> np.ndarray:
    """Density histogram of ``angles`` (rad, wrapped into ``[-pi, pi)``) on ``bins`` bins, smoothed."""
    angles = np.asarray(angles, dtype=np.float64).reshape(-1)
    wrapped = np.mod(angles + np.pi, 2 * np.pi) - np.pi
    h, _ = np.histogram(wrapped, bins, range=(-np.pi, np.pi), density=True,
                        weights=_weights(len(angles), log_weights))
    return periodic_smooth(h) if smooth else h


def kl_paper(h_ref: np.ndarray, h_gen: np.ndarray, eps: float = EPS) -> float:
    """``sum h_ref log((h_ref + eps) / (h_gen + eps))`` (the paper's formula, on any histograms; bins
    with ``h_ref = 0`` contribute 0)."""
    h_ref, h_gen = np.asarray(h_ref, dtype=np.float64), np.asarray(h_gen, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = h_ref * np.log((h_ref + eps) / (h_gen + eps))
    return float(np.sum(np.where(h_ref > 0, terms, 0.0)))


def torsion_kl(ref_angles, gen_angles, log_weights=None, ref_log_weights=None,
               bins: int = 50) -> dict[str, float]:
    """``{"paper": ..., "normalised": ...}`` KL(reference || generated) of one torsion (module doc)."""
    h_ref = torsion_histogram(ref_angles, ref_log_weights, bins)
    h_gen = torsion_histogram(gen_angles, log_weights, bins)
    p, q = h_ref / h_ref.sum(), h_gen / h_gen.sum()
    return {"paper": kl_paper(h_ref, h_gen), "normalised": kl_paper(p, q)}


def free_energy_2d(phi, psi, log_weights=None, bins: int = 20) -> np.ndarray:
    """``-log p`` (kT) of the (weighted) ``(phi, psi)`` histogram, ``(bins, bins)``; ``+inf`` where empty."""
    phi, psi = (np.mod(np.asarray(a, dtype=np.float64).reshape(-1) + np.pi, 2 * np.pi) - np.pi
                for a in (phi, psi))
    h, _, _ = np.histogram2d(phi, psi, bins, range=[(-np.pi, np.pi)] * 2,
                             weights=_weights(len(phi), log_weights))
    with np.errstate(divide="ignore"):
        return -np.log(h / h.sum())


def surface_rmse(f_gen: np.ndarray, f_ref: np.ndarray, min_population: float = 0.01) -> dict[str, float]:
    """RMSE (kT) of ``f_gen - f_ref`` over the bins with reference population ``>= min_population``,
    the constant offset removed; ``num_bins`` compared, ``num_empty`` of them empty in ``f_gen`` (these
    are left out of the RMSE)."""
    use = np.exp(-f_ref) >= min_population
    if not use.any():
        raise ValueError(f"no reference bin holds >= {min_population} of the mass")
    with np.errstate(invalid="ignore"):
        diff = (f_gen - f_ref)[use]
    ok = np.isfinite(diff)
    if not ok.any():
        return {"rmse": float("inf"), "num_bins": int(use.sum()), "num_empty": int(use.sum())}
    d = diff[ok] - diff[ok].mean()
    return {"rmse": float(np.sqrt(np.mean(d**2))), "num_bins": int(use.sum()), "num_empty": int((~ok).sum())}


def weighted_fraction(mask, log_weights=None) -> tuple[float, float]:
    """Weighted fraction of ``mask`` and its delta-method standard error (independent samples)."""
    mask = np.asarray(mask, dtype=np.float64).reshape(-1)
    w = _weights(len(mask), log_weights)
    p = float(np.sum(w * mask) / np.sum(w))
    return p, float(np.sqrt(np.sum(w**2 * (mask - p) ** 2)) / np.sum(w))


def block_standard_error(values, num_blocks: int = 10) -> tuple[float, float]:
    """Mean of a correlated series and the standard error from ``num_blocks`` contiguous block means."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if num_blocks < 2 or len(values) < num_blocks:
        raise ValueError(f"need 2 <= num_blocks <= len(values), got {num_blocks} and {len(values)}")
    means = np.array([b.mean() for b in np.array_split(values, num_blocks)])
    return float(values.mean()), float(means.std(ddof=1) / np.sqrt(num_blocks))


def weight_summary(log_weights) -> dict[str, float]:
    """Kish ESS (count and fraction), ``log Z`` estimate and its standard error, and the PSIS ``k-hat`` of
    the weights' tail (``khat``; above ``KHAT_THRESHOLD = 0.7`` the weights' variance is effectively
    infinite and every reweighted number, its SE included, is unreliable)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    iw = ImportanceWeights(torch.as_tensor(lw))
    khat = psis_khat(np.where(np.isfinite(lw), lw, -np.inf))
    return {"ess": float(iw.ess), "ess_fraction": float(iw.ess_fraction), "log_Z": float(iw.log_evidence),
            "log_Z_se": float(iw.log_evidence_stderr), "khat": khat}


def energy_histogram(u, log_weights=None, edges=None) -> tuple[np.ndarray, np.ndarray]:
    """Density histogram of reduced energies ``u`` (weighted if given) on ``edges`` (default: 60 bins
    spanning the finite values); returns ``(density, edges)``."""
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    w = _weights(len(u), log_weights)
    finite = np.isfinite(u)
    if edges is None:
        edges = np.linspace(u[finite].min(), u[finite].max(), 61)
    density, edges = np.histogram(u[finite], edges, density=True, weights=w[finite])
    return density, edges


__all__ = ["block_standard_error", "energy_histogram", "free_energy_2d", "kl_paper", "periodic_smooth",
           "surface_rmse", "torsion_histogram", "torsion_kl", "weight_summary", "weighted_fraction"]
