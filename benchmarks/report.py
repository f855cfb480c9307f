"""RESULTS.md tables and PNG figures of a suite run.

Figures (small PNGs, matplotlib ``Agg``): per target, equally weighted resamples of every method
(2-D scatter for 2-D targets, a marginal histogram otherwise, with the exact density where known)
and the ESS-versus-wall-time curves (cumulative ESS of the final draws, training included, and the
ESS fraction of a probe batch during training).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RunResult

COLUMNS = ["method", "status", "train s", "sample s", "target evals", "ESS frac.", "ESS/s total",
           "ESS/s sampling", "log Z error ± se", "k-hat", "modes", "metric"]


def fmt(value: float | None, digits: int = 3) -> str:
    """Compact number formatting; ``-`` for missing, ``nan``-safe."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{int(value):,}"
    if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 10**5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"


def row(result: RunResult, m: dict[str, float], metric_name: str) -> list[str]:
    """One table row of a result and its metrics."""
    if not result.ok:
        return [result.method, result.status] + ["-"] * (len(COLUMNS) - 2)
    log_z = "-"
    if "log_Z_error" in m and not math.isnan(m["log_Z_error"]):
        log_z = f"{m['log_Z_error']:+.3f} ± {m['log_Z_stderr']:.3f}"
    modes = f"{m['modes']}/{m['modes_total']}" if m.get("modes", -1) >= 0 and "modes" in m else "-"
    metric = fmt(m.get("target_metric"))
    return [result.method, "ok", fmt(result.train_seconds), fmt(result.sample_seconds),
            fmt(result.train_evals + result.sample_evals), fmt(m["ess_fraction"]), fmt(m["ess_per_s"]),
            fmt(m["ess_per_s_sampling"]), log_z, fmt(m.get("khat")), modes, metric]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _resample(result: RunResult, n: int, generator: torch.Generator) -> np.ndarray:
    x = result.samples
    if result.weights is None:
        idx = torch.randint(len(x), (min(n, len(x)),), generator=generator)
    else:
        idx = result.weights.resample(n, method="multinomial", generator=generator)
    return x[idx].double().numpy()


def sample_figure(results: list[RunResult], path: Path, title: str, coord: int = 0,
                  density: Callable[[np.ndarray], np.ndarray] | None = None, label: str = "x1",
                  scatter: bool = False, limits: tuple[float, float] | None = None) -> None:
    """Resampled draws of each method: 2-D scatter, or the histogram of coordinate ``coord``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok and r.num_samples]
    if not ok:
        return
    gen = torch.Generator().manual_seed(0)
    fig, axes = plt.subplots(1, len(ok), figsize=(2.6 * len(ok), 2.6), squeeze=False, sharex=True,
                             sharey=scatter)
    for ax, res in zip(axes[0], ok):
        draws = _resample(res, 2000, gen)
        if scatter:
            ax.scatter(draws[:, 0], draws[:, 1], s=1, alpha=0.4, rasterized=True)
            if limits:
                ax.set_xlim(*limits)
                ax.set_ylim(*limits)
        else:
            col = draws[:, coord]
            lo, hi = limits or (float(np.quantile(col, 0.001)), float(np.quantile(col, 0.999)))
            ax.hist(col, bins=50, range=(lo, hi), density=True, alpha=0.6)
            if density is not None:
                grid = np.linspace(lo, hi, 300)
                ax.plot(grid, density(grid), "k-", lw=1)
            ax.set_xlabel(label)
        ax.set_title(res.method, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title + " (equally weighted resamples)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def ess_figure(results: list[RunResult], path: Path, title: str) -> None:
    """Cumulative ESS of the final draws vs total wall time, and probe ESS fraction vs training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    for res in results:
        if not res.ok:
            continue
        if res.ess_curve:
            t, e = zip(*res.ess_curve)
            left.plot(t, e, "o-", ms=2, label=res.method)
        if res.train_curve:
            t, f = zip(*res.train_curve)
            right.plot(t, f, "o-", ms=2, label=res.method)
    left.set(xscale="log", yscale="log", xlabel="wall time incl. training (s)", ylabel="ESS")
    right.set(xscale="log", xlabel="training wall time (s)", ylabel="ESS fraction of a probe batch",
              ylim=(0, 1))
    for ax in (left, right):
        ax.tick_params(labelsize=6)
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(7)
    left.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def relative(path: Path, report: Path) -> str:
    """``path`` relative to the report's folder (for markdown links)."""
    return os.path.relpath(path, report.parent).replace(os.sep, "/")
