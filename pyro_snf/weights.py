"""One place that turns importance log-weights into numbers.

For weights :math:`w_i = \\exp(\\log w_i)`, :math:`i = 1..n`, drawn from a proposal ``q`` against an
unnormalised target ``exp(-u)``:

- log evidence :math:`\\log \\hat Z = \\log \\frac1n \\sum_i w_i` (unbiased in ``Z``, not in ``log Z``);
- its delta-method standard error
  :math:`\\operatorname{se}(\\log \\hat Z) = \\sqrt{\\widehat{\\operatorname{var}}(w) / (n\\, \\bar w^2)}`;
- Kish's effective sample size :math:`(\\sum w)^2 / \\sum w^2` and its fraction of ``n``;
- self-normalised weights and resampling (systematic or multinomial).

``-inf`` log-weights (zero weight: particles whose energy was non-finite) are legal and counted;
NaN or ``+inf`` are sanitised to ``-inf`` by :func:`sanitize_log_weights`, which reports how many.

Example::

    >>> import torch
    >>> iw = ImportanceWeights(torch.zeros(1000))
    >>> float(iw.log_evidence), float(iw.ess_fraction)
    (0.0, 1.0)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor


def sanitize_log_weights(log_w: Tensor, warn: bool = True, what: str = "samples",
                         stacklevel: int = 2) -> Tensor:
    """Replace NaN / ``+inf`` log-weights by ``-inf`` (weight zero) and warn with the count of
    particles that have zero weight because of non-finite energies."""
    bad = torch.isnan(log_w) | (log_w == float("inf"))
    clean = torch.where(bad, torch.full_like(log_w, -float("inf")), log_w)
    if warn:
        zero = int((clean == -float("inf")).sum())
        if zero:
            warnings.warn(
                f"{zero} of {log_w.numel()} {what} have zero importance weight (non-finite energy, "
                "force or log-density along their path); they are kept with log-weight -inf",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
    return clean


def log_mean_exp(log_w: Tensor, dim: int = -1) -> Tensor:
    """``log(mean(exp(log_w)))`` along ``dim``, stable, ``-inf`` if every weight is zero."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


@dataclass(frozen=True)
class ImportanceWeights:
    """Summary statistics of a 1-d tensor of importance log-weights."""

    log_weights: Tensor

    def __post_init__(self) -> None:
        lw = self.log_weights
        if lw.dim() != 1 or lw.numel() == 0:
            raise ValueError(f"log_weights must be a non-empty 1-d tensor, got shape {tuple(lw.shape)}")
        if torch.isnan(lw).any() or (lw == float("inf")).any():
            raise ValueError("log_weights contain NaN or +inf; pass them through sanitize_log_weights first")

    @property
    def num_samples(self) -> int:
        return self.log_weights.numel()

    @property
    def num_zero(self) -> int:
        """Particles with zero weight (log-weight ``-inf``)."""
        return int((self.log_weights == -float("inf")).sum())

    def _scaled(self) -> Tensor:
        lw = self.log_weights
        return (lw - lw.max()).exp()

    @property
    def log_evidence(self) -> Tensor:
        """``log mean w``: the log-normaliser estimate (``log Z`` of ``exp(-u)``)."""
        return log_mean_exp(self.log_weights.detach())

    @property
    def log_evidence_stderr(self) -> Tensor:
        """Delta-method standard error of :attr:`log_evidence` (``inf`` if all weights are zero)."""
        n = self.num_samples
        w = self._scaled().detach()
        mean = w.mean()
        if not torch.isfinite(mean) or mean == 0 or n < 2:
            return torch.full((), float("inf"), dtype=w.dtype, device=w.device)
        var = w.var(unbiased=True)
        return (var / (n * mean * mean)).sqrt()

    @property
    def ess(self) -> Tensor:
        """Kish effective sample size ``(sum w)^2 / sum w^2``."""
        w = self._scaled().detach()
        if not torch.isfinite(w).all():
            return torch.zeros((), dtype=w.dtype, device=w.device)
        return w.sum().pow(2) / w.pow(2).sum()

    @property
    def ess_fraction(self) -> Tensor:
        return self.ess / self.num_samples

    @property
    def normalized_weights(self) -> Tensor:
        """Self-normalised weights, summing to one."""
        return torch.softmax(self.log_weights.detach(), dim=0)

    def resample(self, num_samples: int | None = None, method: str = "systematic",
                 generator: torch.Generator | None = None) -> Tensor:
        """Indices of an equally weighted resample of size ``num_samples`` (default: n).

        ``method="systematic"`` (one uniform, lowest variance) or ``"multinomial"``.
        """
        n_out = self.num_samples if num_samples is None else int(num_samples)
        if n_out <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        p = self.normalized_weights
        if not torch.isfinite(p).all():
            raise ValueError("cannot resample: every importance weight is zero")
        if method == "multinomial":
            return torch.multinomial(p, n_out, replacement=True, generator=generator)
        if method != "systematic":
            raise ValueError(f"method must be 'systematic' or 'multinomial', got {method!r}")
        u0 = 1.0 - torch.rand((), dtype=torch.float64, device=p.device, generator=generator)
        points = (u0 + torch.arange(n_out, dtype=torch.float64, device=p.device)) / n_out
        cdf = p.to(torch.float64).cumsum(0)
        cdf = cdf / cdf[-1]
        return torch.searchsorted(cdf, points).clamp_(max=self.num_samples - 1)

    def summary(self) -> dict[str, float]:
        """Plain floats: log evidence, its standard error, ESS, ESS fraction, zero weights."""
        return {
            "log_evidence": float(self.log_evidence),
            "log_evidence_stderr": float(self.log_evidence_stderr),
            "ess": float(self.ess),
            "ess_fraction": float(self.ess_fraction),
            "num_samples": self.num_samples,
            "num_zero_weight": self.num_zero,
        }
