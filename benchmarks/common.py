"""Shared pieces of the benchmark suite: evaluation counting, timing, the per-run record.

Every method returns a :class:`RunResult`: its final draws in ``chunks`` (independent sample sets
for importance samplers, consecutive segments of the chain for MCMC), the importance log-weights of
each chunk (``None`` for MCMC), wall times, target evaluations and an ESS-versus-time curve. All
log Z / ESS numbers come from :class:`pyro_snf.weights.ImportanceWeights`; MCMC ESS from ArviZ.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_snf.diagnostics.arviz_compat import psis_khat
from pyro_snf.weights import ImportanceWeights, sanitize_log_weights


class CountingPotential:
    """Wraps an energy ``u`` (``(..., D) -> (...)``) and counts target evaluations.

    ``evals`` counts particles: a call on ``x`` of shape ``(B, D)`` adds ``B``. Energy-only and
    energy+force calls count the same (a force is one backward pass through the same graph).
    Attributes of the wrapped potential (``dim``, ``log_Z``, ``sample``...) pass through.
    """

    def __init__(self, potential: Callable[[Tensor], Tensor]) -> None:
        self.potential = potential
        self.evals = 0
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.evals += math.prod(x.shape[:-1])
        return self.potential(x)

    def __getattr__(self, name: str) -> Any:
        if name == "potential":  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.potential, name)


@dataclass
class Timer:
    """Accumulating stopwatch; ``with timer.running(): ...`` adds the block's wall time."""

    seconds: float = 0.0

    def running(self) -> _Running:
        return _Running(self)


class _Running:
    def __init__(self, timer: Timer) -> None:
        self.timer = timer

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.seconds += time.perf_counter() - self.start


@dataclass
class RunResult:
    """One method on one target; ``status`` is ``"ok"`` or a reason ("skipped: ...", "failed: ...")."""

    method: str
    target: str
    status: str = "ok"
    chunks: list[Tensor] = field(default_factory=list)
    log_weights: list[Tensor] | None = None
    train_seconds: float = 0.0
    sample_seconds: float = 0.0
    train_evals: int = 0
    sample_evals: int = 0
    #: (training seconds, ESS fraction of a probe batch)
    train_curve: list[tuple[float, float]] = field(default_factory=list)
    ess_curve: list[tuple[float, float]] = field(default_factory=list)  #: (total s, cumulative ESS)
    step_seconds: float = math.nan  #: mean wall time of one training step
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    config: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def samples(self) -> Tensor:
        return torch.cat(self.chunks)

    @property
    def weights(self) -> ImportanceWeights | None:
        if self.log_weights is None:
            return None
        return ImportanceWeights(torch.cat(self.log_weights).double())

    @property
    def num_samples(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def total_seconds(self) -> float:
        return self.train_seconds + self.sample_seconds

    def ess(self) -> float:
        """Kish ESS of all importance draws, or ArviZ's bulk ESS (minimum over coordinates) of a chain."""
        if self.log_weights is not None:
            return float(self.weights.ess)
        return mcmc_ess(self.samples)


def mcmc_ess(chain: Tensor) -> float:
    """Minimum over coordinates of ArviZ's bulk ESS of one chain ``(num_draws, D)``."""
    import arviz as az

    draws = chain.detach().double().cpu().numpy()[None]  # (chain, draw, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = [float(az.ess(draws[..., d], method="bulk")) for d in range(draws.shape[-1])]
    return float(np.nanmin(ess))


def khat(log_w: Tensor) -> float:
    """PSIS k-hat of log-weights (the diagnostics module's adapter)."""
    return psis_khat(sanitize_log_weights(log_w.detach().double().cpu(), warn=False))


def sample_in_chunks(draw: Callable[[int], tuple[Tensor, Tensor]], num_chunks: int, chunk_size: int,
                     result: RunResult, potential: CountingPotential) -> None:
    """Draw ``num_chunks`` independent sets with ``draw(n) -> (x, log_w)``, timing each and
    recording the cumulative (time, Kish ESS) curve and the sampling evaluations in ``result``."""
    timer, before = Timer(), potential.evals
    result.chunks, result.log_weights = [], []
    for _ in range(num_chunks):
        with timer.running():
            x, log_w = draw(chunk_size)
        result.chunks.append(x.detach().cpu())
        result.log_weights.append(sanitize_log_weights(log_w.detach().double().cpu(), warn=False))
        ess = float(ImportanceWeights(torch.cat(result.log_weights)).ess)
        result.ess_curve.append((result.train_seconds + timer.seconds, ess))
    result.sample_seconds = timer.seconds
    result.sample_evals = potential.evals - before


def probe_ess_fraction(draw: Callable[[int], tuple[Tensor, Tensor]], n: int) -> float:
    """ESS fraction of one probe batch of ``n`` draws (for training curves)."""
    _, log_w = draw(n)
    return float(ImportanceWeights(sanitize_log_weights(log_w.detach().double(), warn=False)).ess_fraction)


def resampled_draws(draw: Callable[[int], tuple[Tensor, Tensor]], n: int) -> Tensor:
    """``n`` draws, importance-resampled (systematic) to equal weights: approximate target samples
    for the ``sis_ml`` protocol (forward KL by self-normalised importance sampling)."""
    x, log_w = draw(n)
    weights = ImportanceWeights(sanitize_log_weights(log_w.detach(), warn=False))
    return x.detach()[weights.resample(n)]


def seed_everything(seed: int) -> None:
    """Seed torch, Pyro and numpy."""
    import pyro

    pyro.set_rng_seed(seed)
