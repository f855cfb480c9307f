"""Per-target accuracy metrics of a :class:`~benchmarks.common.RunResult`.

Common columns: log Z error (importance samplers only), ESS fraction, PSIS k-hat, modes covered
where countable (a mode is covered when it holds at least 1% of its expected mass). Target metrics:

- double well: reweighted free-energy error along ``x1`` in kT
  (:func:`pyro_snf.examples.double_well.free_energy_error`, the paper's bias/uncertainty analysis
  over the independent sample sets; unweighted for MCMC);
- GMM40: total-variation distance between the (weighted) mode masses and the uniform 1/40;
- many-well: error of the mean left-well mass per pair (exact 0.1557);
- funnel: Kolmogorov-Smirnov distance of the weighted ECDF of ``v`` against ``N(0, 3^2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmarks.common import RunResult, khat
from pyro_snf.examples.double_well import free_energy_error, free_energy_profile
from pyro_snf.targets import LEFT_WELL_MASS, Target
from pyro_snf.targets.gmm import GaussianMixture
from pyro_snf.weights import ImportanceWeights

MODE_FRACTION = 0.01
TARGET_METRIC = {
    "double_well": "free-energy error (kT)",
    "gmm40": "mode-mass TV distance",
    "many_well_8": "left-well mass error",
    "many_well_32": "left-well mass error",
    "funnel_10": "KS distance of v",
}


def weighted_ks_normal(values: Tensor, weights: Tensor, scale: float) -> float:
    """``sup_t |F_w(t) - Phi(t / scale)|`` for the weighted ECDF ``F_w`` (weights sum to one)."""
    order = values.double().argsort()
    v, w = values.double()[order], weights.double()[order]
    upper = w.cumsum(0)
    lower = upper - w
    cdf = 0.5 * (1.0 + torch.erf(v / (scale * math.sqrt(2.0))))
    return float(torch.maximum((upper - cdf).abs(), (lower - cdf).abs()).max())


def well_modes(x: Tensor, weights: Tensor) -> tuple[int, int, float]:
    """Covered / total modes of a (many-)well and the mean left-well mass per pair."""
    left = x[:, 0::2] < 0  # (n, pairs)
    pairs = left.shape[1]
    left_mass = float((weights.unsqueeze(-1) * left.double()).sum(0).mean())
    if pairs > 8:
        return -1, 2**pairs, left_mass
    code = (left.long() * (2 ** torch.arange(pairs))).sum(-1)
    mass = torch.zeros(2**pairs, dtype=torch.float64).index_add_(0, code, weights)
    bits = (torch.arange(2**pairs).unsqueeze(-1) >> torch.arange(pairs)) & 1
    expected = torch.where(bits.bool(), LEFT_WELL_MASS, 1 - LEFT_WELL_MASS).prod(-1)
    return int((mass >= MODE_FRACTION * expected).sum()), 2**pairs, left_mass


def evaluate(result: RunResult, target: Target) -> dict[str, float]:
    """All metric columns of ``result`` on ``target`` (see the module docstring)."""
    x = result.samples.double()
    lw = None if result.log_weights is None else torch.cat(result.log_weights).double()
    # self-normalised weights; MCMC draws (no log-weights) weigh uniformly
    w = ImportanceWeights(torch.zeros(len(x), dtype=torch.float64) if lw is None else lw).normalized_weights
    out: dict[str, float] = {"num_samples": len(x), "ess": result.ess()}
    out["ess_fraction"] = out["ess"] / len(x)
    out["ess_per_s"] = out["ess"] / max(result.total_seconds, 1e-9)
    out["ess_per_s_sampling"] = out["ess"] / max(result.sample_seconds, 1e-9)
    if result.weights is not None:
        iw = result.weights
        out["log_Z"] = float(iw.log_evidence)
        out["log_Z_stderr"] = float(iw.log_evidence_stderr)
        out["log_Z_error"] = out["log_Z"] - target.log_Z if target.log_Z is not None else math.nan
        out["khat"] = khat(lw)
        out["zero_weight"] = iw.num_zero
    key = result.target
    if key == "double_well":
        chunk_weights = result.log_weights or [None] * len(result.chunks)
        out["target_metric"] = free_energy_error(free_energy_profile(c, lw_c)
                                                 for c, lw_c in zip(result.chunks, chunk_weights))
    if key == "double_well" or key.startswith("many_well"):
        covered, total, left = well_modes(x, w)
        out["modes"], out["modes_total"] = covered, total
        out["left_mass"] = left
        if key.startswith("many_well"):
            out["target_metric"] = abs(left - LEFT_WELL_MASS)
    elif key == "gmm40":
        assert isinstance(target, GaussianMixture)
        mass = target.mode_counts(x, w)
        out["modes"] = int((mass >= MODE_FRACTION / target.num_modes).sum())
        out["modes_total"] = target.num_modes
        out["target_metric"] = float(0.5 * (mass - 1.0 / target.num_modes).abs().sum())
    elif key.startswith("funnel"):
        out["target_metric"] = weighted_ks_normal(x[:, 0], w, getattr(target, "scale", 3.0))
    return out
