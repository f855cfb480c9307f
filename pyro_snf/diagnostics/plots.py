"""Diagnostic plots for importance sampling; each returns a ``matplotlib.figure.Figure``.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``), not ``pyplot``:
no global figure state, no GUI backend and no ``plt.show()``; save them with ``fig.savefig(...)``
or display them in a notebook.

- :func:`plot_weights`: sorted normalised weights (rank vs weight, log-log, against the uniform
  ``1/n``) and a histogram of the log-weights, annotated with ESS, k-hat and zero weights. A good
  proposal gives a flat-ish weight curve and a narrow log-weight histogram; a few particles
  carrying most of the mass show up as a steep head and a long right tail.
- :func:`plot_marginals`: per latent component, the self-normalised weighted histogram, the
  histogram of resampled draws and, optionally, reference draws (e.g. from MCMC).

Both take any object with the attributes of :class:`WeightedDraws` (``log_weights``, ``samples``,
``khat``), such as the result of ``importance_sample``; :func:`plot_weights` also takes a tensor of
log-weights.

Example::

    >>> import torch
    >>> fig = plot_weights(torch.randn(2000))
    >>> type(fig).__name__, len(fig.axes)
    ('Figure', 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from pyro_snf.diagnostics.arviz_compat import khat_verdict, psis_khat
from pyro_snf.weights import ImportanceWeights, sanitize_log_weights

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@runtime_checkable
class WeightedDraws(Protocol):
    """What the plots read from weighted draws (importance-sampling results have these attributes)."""

    @property
    def log_weights(self) -> Tensor:
        """Sanitised log-weights, shape ``(n,)`` (``-inf`` = zero weight, no NaN or ``+inf``)."""

    @property
    def samples(self) -> Mapping[str, Tensor]:
        """Site name -> draws ``(n, *site_shape)``, one per weight."""

    @property
    def khat(self) -> float:
        """PSIS k-hat of the weights (``nan`` if not computed)."""


def plot_weights(result: WeightedDraws | Tensor, bins: int = 60,
                 figsize: tuple[float, float] = (10.0, 3.6)) -> Figure:
    """Sorted normalised weights and a log-weight histogram, annotated with ESS and k-hat.

    :param result: weighted draws (see :class:`WeightedDraws`) or a 1-d tensor of raw log-weights.
    """
    from matplotlib.figure import Figure

    if isinstance(result, torch.Tensor):
        log_w = sanitize_log_weights(result.detach().reshape(-1), warn=False)
        khat = psis_khat(log_w)
    else:
        log_w, khat = result.log_weights, result.khat
    iw = ImportanceWeights(log_w)
    n = iw.num_samples
    w = np.sort(iw.normalized_weights.detach().cpu().double().numpy())[::-1]
    fig = Figure(figsize=figsize, layout="constrained")
    ax_w, ax_h = fig.subplots(1, 2)
    rank = np.arange(1, n + 1)
    positive = w > 0
    ax_w.loglog(rank[positive], w[positive], lw=1.5, label="normalised weights")
    ax_w.axhline(1.0 / n, color="k", ls="--", lw=1, label="uniform 1/n")
    if positive.any():  # weights far below 1/n carry no mass: do not let them squash the plot
        ax_w.set_ylim(bottom=max(float(w[positive].min()), 1e-6 / n) / 2)
    ax_w.set(xlabel="rank", ylabel="weight", title="sorted normalised weights")
    ax_w.legend(loc="lower left", fontsize="small")
    finite = log_w[torch.isfinite(log_w)].detach().cpu().double().numpy()
    num_below = 0
    if finite.size:
        relative = finite - finite.max()
        # the bulk (99.9% of the particles): one particle 1000 nats down must not squash the rest
        shown = relative >= np.quantile(relative, 1e-3)
        num_below = int((~shown).sum())
        ax_h.hist(relative[shown], bins=bins, color="C1", alpha=0.8)
    ax_h.set(xlabel="log w - max log w", ylabel="count", title="log-weight histogram")
    text = (f"ESS = {float(iw.ess):.1f} ({100 * float(iw.ess_fraction):.1f}% of {n})\n"
            f"k-hat = {khat:.2f}: {khat_verdict(khat).split(':')[0]}\n"
            f"zero weights: {iw.num_zero}"
            + (f"\nlower log-weights not shown: {num_below}" if num_below else ""))
    ax_h.text(0.03, 0.97, text, transform=ax_h.transAxes, va="top", ha="left", fontsize="small",
              bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    return fig


def plot_marginals(result: WeightedDraws, sites: list[str] | None = None,
                   reference: Mapping[str, Any] | None = None, num_draws: int | None = None,
                   max_components: int = 4, bins: int = 40, ncols: int = 4,
                   panel_size: tuple[float, float] = (3.0, 2.4)) -> Figure:
    """Weighted vs resampled posterior marginals per site component, optionally vs reference draws.

    :param sites: site names (default: all); each shows at most ``max_components`` components.
    :param reference: site -> reference draws with a leading sample dim (tensors or arrays).
    :param num_draws: resample size (default: the number of particles).
    """
    from matplotlib.figure import Figure

    names = list(result.samples) if sites is None else list(sites)
    missing = [s for s in names if s not in result.samples]
    if missing:
        raise KeyError(f"no such site(s) {missing}; available: {list(result.samples)}")
    iw = ImportanceWeights(result.log_weights)
    w = iw.normalized_weights.detach().cpu().double().numpy()
    idx = iw.resample(num_draws)  # systematic, then shuffled: the draws and RNG use of result.resample
    idx = idx[torch.randperm(idx.numel(), device=idx.device)]
    drawn = {name: value[idx.to(value.device)] for name, value in result.samples.items()}
    panels = []
    for name in names:
        x = _as_2d(result.samples[name], iw.num_samples)
        r = _as_2d(drawn[name], None)
        ref = _as_2d(reference[name], None) if reference is not None and name in reference else None
        for k in range(min(x.shape[1], max_components)):
            label = name if x.shape[1] == 1 else f"{name}[{k}]"
            panels.append((label, x[:, k], r[:, k], None if ref is None else ref[:, k]))
    cols = max(1, min(ncols, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax, (label, x, r, ref) in zip(axes, panels):
        keep = (w > 0) & np.isfinite(x)
        lo, hi = _range(x[keep], r, ref)
        edges = np.linspace(lo, hi, bins + 1)
        ax.hist(x[keep], bins=edges, weights=w[keep], density=True, histtype="step", lw=1.8,
                label="weighted")
        ax.hist(r, bins=edges, density=True, alpha=0.4, label="resampled")
        if ref is not None:
            ax.hist(ref, bins=edges, density=True, histtype="step", ls="--", color="k", label="reference")
        ax.set_title(label, fontsize="medium")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if panels:
        axes[0].legend(fontsize="x-small")
    return fig


def _as_2d(x: Any, n: int | None) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)
    return arr.reshape(arr.shape[0] if n is None else n, -1)


def _range(*arrays: np.ndarray | None) -> tuple[float, float]:
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays if a is not None and a.size])
    if vals.size == 0:
        return -1.0, 1.0
    lo, hi = np.quantile(vals, [0.001, 0.999])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)
