"""The result of :func:`~pyro_snf.infer.importance.importance_sample`: weights, draws, diagnostics.

With normalised weights :math:`\\bar w_i = w_i / \\sum_j w_j`, posterior expectations are
self-normalised, :math:`\\hat{\\mathbb E}[f] = \\sum_i \\bar w_i f(z_i)` (consistent, biased by
O(1/n)); quantiles invert the weighted empirical CDF. Equally weighted draws come from resampling
(systematic by default: one uniform, lowest variance) through
:meth:`pyro_snf.weights.ImportanceWeights.resample`, shuffled so that any prefix is a fair subsample.

ArviZ conversion (:meth:`ImportanceResult.to_inference_data`):

- ``posterior``: resampled, equally weighted draws, ``chain`` of size 1, ``draw`` = resample size;
  site names as in the model; an axis inside ``pyro.plate("schools", ...)`` gets the dim name
  ``"schools"``, other axes ``"<site>_dim_<i>"``; size-1 batch axes that only pad for plates the
  site is not in are dropped (``res.samples`` keeps the model's shapes).
- ``sample_stats`` (same ``chain``/``draw`` dims as the posterior): ``log_weight``, the raw
  importance log-weight of the particle each draw copies, and ``particle``, that particle's index
  into ``res.log_weights``; the full set of raw weights stays in ``res.log_weights``.
- attributes: log evidence, its standard error, ESS, k-hat, numbers of samples and zero weights.

Example (a result built by hand; :func:`~pyro_snf.infer.importance.importance_sample` makes them)::

    >>> import torch
    >>> res = ImportanceResult(torch.tensor([0.0, 0.0, -float("inf"), 0.0]),
    ...                        {"x": torch.tensor([1.0, 2.0, 100.0, 3.0])})
    >>> round(float(res.posterior_mean()["x"]), 4), res.num_zero_weight, res.resample(6)["x"].shape
    (2.0, 1, torch.Size([6]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_snf.diagnostics.arviz_compat import from_dict, khat_verdict
from pyro_snf.diagnostics.plots import plot_marginals, plot_weights
from pyro_snf.weights import ImportanceWeights

_NOTE = (
    "Note: E[w] = Z for any guide with full support, trained or not, so even an untrained guide gives an\n"
    "unbiased (in Z; log Z slightly low, by about stderr^2/2) but possibly very noisy evidence estimate.\n"
    "Read the stderr, the ESS and k-hat: k < 0.5 good, 0.5-0.7 ok (slow convergence), > 0.7 unreliable,\n"
    "> 1 the weights' variance is infinite and their mean may not exist. The stderr is estimated from the\n"
    "same weights and is too optimistic when k-hat is large. k-hat detects heavy-tailed weights: a guide\n"
    "too narrow or misplaced where it has mass. No statistic of the weights sees posterior mass the guide\n"
    "never visits (a missed mode): the weights then look fine and log Z is low by the missing mass. Check\n"
    "with independent runs from different initialisations (log Z disagreeing beyond their SEs),\n"
    "multi-start optimisation, or a wider or prior-based proposal."
)


@dataclass(frozen=True)
class SiteInfo:
    """Shape and plates of a model site, from an unvectorised run."""

    shape: tuple[int, ...]
    event_dim: int = 0
    plates: dict[int, str] = field(default_factory=dict)  # plate dim (negative) -> plate name
    in_guide: bool = True
    deterministic: bool = False


@dataclass(repr=False)
class ImportanceResult:
    """Importance-sampling output; see the module docstring for conventions.

    :ivar log_weights: sanitised log-weights ``log p - log q`` (``-inf`` = zero weight), shape ``(n,)``.
    :ivar samples: site name -> weighted draws ``(n, *site_shape)`` in the constrained space.
    :ivar khat: PSIS Pareto k-hat of the weights (``nan`` if fewer than 50 samples).
    :ivar num_nonfinite: particles with an invalid log density (model NaN/``+inf``, guide non-finite,
        e.g. an SNF guide's ``+inf`` for particles frozen at NaN energies), given zero weight;
        ``num_zero_weight`` counts these plus legitimate zeros (``log p = -inf``).
    :ivar log_model: ``log p(data, latents)`` per particle; ``log_guide``: ``log q`` per particle.
    :ivar warnings: what the producer's checks found (e.g. :func:`~pyro_snf.infer.sample_posterior`);
        ``modes``, ``prior_log_evidence``: its per-mode table and prior check (None otherwise).
    """

    log_weights: Tensor
    samples: dict[str, Tensor]
    khat: float = math.nan
    num_nonfinite: int = 0
    log_model: Tensor | None = None
    log_guide: Tensor | None = None
    sites: dict[str, SiteInfo] = field(default_factory=dict)
    prior_sites: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)
    modes: list[dict[str, Any]] | None = None
    prior_log_evidence: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        self.weights = ImportanceWeights(self.log_weights)
        for name, value in self.samples.items():
            if value.shape[:1] != self.log_weights.shape:
                raise ValueError(f"samples[{name!r}] has shape {tuple(value.shape)}; expected leading "
                                 f"dim {self.num_samples}")

    # -- scalar statistics -----------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self.weights.num_samples

    @property
    def log_evidence(self) -> float:
        """``log mean w``, the estimate of ``log p(data)``."""
        return float(self.weights.log_evidence)

    @property
    def log_evidence_stderr(self) -> float:
        return float(self.weights.log_evidence_stderr)

    @property
    def ess(self) -> float:
        return float(self.weights.ess)

    @property
    def ess_fraction(self) -> float:
        return float(self.weights.ess_fraction)

    @property
    def num_zero_weight(self) -> int:
        return self.weights.num_zero

    @property
    def normalized_weights(self) -> Tensor:
        return self.weights.normalized_weights

    # -- posterior statistics (self-normalised) --------------------------------------------------
    def _flat(self, name: str) -> tuple[Tensor, Tensor]:
        """Draws of a site as ``(n, m)`` doubles, zeroed where the weight is zero, and the weights."""
        w = self.normalized_weights.double()
        x = self.samples[name].reshape(self.num_samples, -1).double()
        return torch.where((w > 0)[:, None], x, torch.zeros_like(x)), w

    def posterior_mean(self) -> dict[str, Tensor]:
        """Self-normalised posterior means, site -> tensor of the site's shape."""
        out = {}
        for name, value in self.samples.items():
            x, w = self._flat(name)
            out[name] = (w @ x).reshape(value.shape[1:])
        return out

    def posterior_sd(self) -> dict[str, Tensor]:
        """Self-normalised posterior standard deviations."""
        out = {}
        for name, value in self.samples.items():
            x, w = self._flat(name)
            mean = w @ x
            out[name] = (w @ (x - mean) ** 2).clamp(min=0).sqrt().reshape(value.shape[1:])
        return out

    def posterior_quantiles(self, probs: Sequence[float] = (0.05, 0.5, 0.95)) -> dict[str, Tensor]:
        """Weighted quantiles, site -> tensor ``(len(probs), *site_shape)``."""
        q = torch.as_tensor(list(probs), dtype=torch.float64)
        out = {}
        for name, value in self.samples.items():
            x, w = self._flat(name)
            xs, idx = x.sort(0)
            cdf = w[idx].cumsum(0).T.contiguous()  # (m, n)
            pos = torch.searchsorted(cdf, q.to(cdf.device).expand(cdf.shape[0], -1).contiguous())
            pos = pos.clamp(max=self.num_samples - 1)
            out[name] = xs.gather(0, pos.T).reshape((len(q), *value.shape[1:]))
        return out

    # -- resampling and conversion ---------------------------------------------------------------
    def resample_indices(self, num_samples: int | None = None, method: str = "systematic",
                         shuffle: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Indices of an equally weighted resample (see :meth:`ImportanceWeights.resample`)."""
        idx = self.weights.resample(num_samples, method=method, generator=generator)
        if shuffle:
            idx = idx[torch.randperm(idx.numel(), generator=generator, device=idx.device)]
        return idx

    def resample(self, num_samples: int | None = None, method: str = "systematic",
                 shuffle: bool = True, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Equally weighted draws: site -> tensor ``(num_samples, *site_shape)`` (default size: n)."""
        idx = self.resample_indices(num_samples, method, shuffle, generator)
        return {name: value[idx.to(value.device)] for name, value in self.samples.items()}

    def diagnostics(self) -> dict[str, float]:
        """Plain numbers: the weights' summary plus k-hat and the non-finite count."""
        out: dict[str, float] = dict(self.weights.summary())
        out.update(khat=self.khat, num_nonfinite=self.num_nonfinite)
        return out

    def to_inference_data(self, num_draws: int | None = None, method: str = "systematic",
                          coords: dict[str, Any] | None = None,
                          generator: torch.Generator | None = None) -> Any:
        """ArviZ ``InferenceData`` (0.x) / ``DataTree`` (1.x) of ``num_draws`` resampled draws.

        :param num_draws: resample size, the ``draw`` dim (default: the number of particles).
        :param coords: coordinate values per dim name, e.g. ``{"schools": names}``.
        """
        idx = self.resample_indices(num_draws, method, True, generator)
        posterior, dims = {}, {}
        for name, value in self.samples.items():
            arr = value[idx.to(value.device)].detach().cpu().numpy()
            keep, var_dims = _arviz_dims(name, self.sites.get(name), arr.shape[1:])
            posterior[name] = arr.reshape((arr.shape[0], *[arr.shape[1 + i] for i in keep]))[None]
            dims[name] = var_dims
        lw = self.log_weights.detach().cpu().double().numpy()
        index = idx.cpu().numpy()
        stats = {"log_weight": lw[index][None], "particle": index.astype(np.int64)[None]}
        attrs = {
            "inference_library": "pyro_snf",
            "method": "importance_sampling",
            "log_evidence": self.log_evidence,
            "log_evidence_stderr": self.log_evidence_stderr,
            "ess": self.ess,
            "khat": self.khat,
            "num_samples": self.num_samples,
            "num_zero_weight": self.num_zero_weight,
        }
        return from_dict({"posterior": posterior, "sample_stats": stats}, coords=coords, dims=dims,
                         attrs=attrs)

    # -- plots (matplotlib figures; an ImportanceResult is a diagnostics.plots.WeightedDraws) -----
    def plot_weights(self, **kwargs: Any) -> Any:
        """See :func:`pyro_snf.diagnostics.plots.plot_weights`."""
        return plot_weights(self, **kwargs)

    def plot_marginals(self, **kwargs: Any) -> Any:
        """See :func:`pyro_snf.diagnostics.plots.plot_marginals`."""
        return plot_marginals(self, **kwargs)

    # -- text --------------------------------------------------------------------------------------
    def summary(self, max_site_size: int = 10, probs: Sequence[float] = (0.05, 0.5, 0.95)) -> str:
        """A plain-text table: evidence, ESS, k-hat, zero weights, per-site posterior statistics."""
        n = self.num_samples
        lines = [
            f"Importance sampling: {n} particles",
            f"  log evidence  {self.log_evidence:.4f} +/- {self.log_evidence_stderr:.4f}"
            "  (log mean w, delta-method standard error)",
            f"  ESS (Kish)    {self.ess:.1f}  ({100 * self.ess_fraction:.1f}% of {n})",
            f"  PSIS k-hat    {self.khat:.3f}  {khat_verdict(self.khat)}",
            f"  zero weight   {self.num_zero_weight} particles "
            f"({self.num_nonfinite} with NaN/+inf log density)",
        ]
        if self.prior_sites:
            lines.append(f"  drawn from the model prior (not in the guide): {', '.join(self.prior_sites)}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += ["", *self._site_table(max_site_size, probs), "", _NOTE]
        return "\n".join(lines)

    def _site_table(self, max_site_size: int, probs: Sequence[float]) -> list[str]:
        if not self.samples:
            return ["(no latent sites)"]
        if self.num_zero_weight == self.num_samples:
            return ["(every weight is zero: no posterior statistics)"]
        heads = ["mean", "sd", *[f"{100 * p:g}%" for p in probs]]
        small = [name for name, v in self.samples.items() if v[0].numel() <= max_site_size]
        mean, sd, qs = self.posterior_mean(), self.posterior_sd(), self.posterior_quantiles(probs)
        rows = []
        for name in small:
            shape = tuple(self.samples[name].shape[1:])
            stats = torch.cat([mean[name].reshape(1, -1), sd[name].reshape(1, -1),
                               qs[name].reshape(len(probs), -1)])  # (2 + len(probs), numel)
            for k, index in enumerate(np.ndindex(*shape)):
                label = name + (f"[{','.join(map(str, index))}]" if shape else "")
                rows.append((label, [f"{float(v):.4g}" for v in stats[:, k]]))
        width = max([len("site"), *[len(r[0]) for r in rows]])
        out = ["  " + "site".ljust(width) + "".join(h.rjust(11) for h in heads)]
        out += ["  " + label.ljust(width) + "".join(v.rjust(11) for v in vals) for label, vals in rows]
        for name, value in self.samples.items():
            if name not in small:
                out.append(f"  {name.ljust(width)}  (shape {tuple(value.shape[1:])}: not shown)")
        return out

    def __str__(self) -> str:
        return self.summary()

    __repr__ = __str__


def _arviz_dims(name: str, info: SiteInfo | None, shape: tuple[int, ...]) -> tuple[list[int], list[str]]:
    """Axes to keep and their ArviZ dim names (plate names where the model has a plate)."""
    event_dim = info.event_dim if info is not None else 0
    plates = info.plates if info is not None else {}
    batch_ndim = len(shape) - event_dim
    keep, dims = [], []
    for i, size in enumerate(shape):
        plate = plates.get(i - batch_ndim) if i < batch_ndim else None
        if plate is None and i < batch_ndim and size == 1:
            continue
        keep.append(i)
        dims.append(plate if plate is not None else f"{name}_dim_{i}")
    return keep, dims
