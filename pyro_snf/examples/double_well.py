"""The paper's double-well study: protocol, exact profile and the one evaluation.

Shared by the demo (:mod:`pyro_snf.examples.demo`), the benchmarks and tutorial 01.

Training (Wu, Köhler & Noé 2020): 300 iterations of maximum likelihood on exact target samples,
then 300 iterations of 50/50 maximum likelihood + reverse KL; batch 128; Adam, learning rate 5e-3
(one optimizer across both stages). Evaluation: ``num_sets`` independent sample sets of
``set_size`` draws, each giving an unweighted and a reweighted free-energy profile along ``x1``
(30 bins on ``[-3, 3]``: :data:`EDGES`), scored against :func:`exact_double_well_profile` with
:func:`pyro_snf.diagnostics.free_energy.profile_error` (:func:`free_energy_error`); plus the log Z
estimate, ESS fraction and left-well mass of the pooled, reweighted sample.

Example::

    >>> from pyro_snf.architectures import paper_double_well_snf
    >>> from pyro_snf.targets import DoubleWell
    >>> target = DoubleWell()
    >>> snf = paper_double_well_snf(target, "rnvp")
    >>> _ = train_paper_protocol(snf, target.sample(1000), iterations=(2, 2), batch_size=16)
    >>> row = evaluate(snf, target, num_sets=2, set_size=1000)
    >>> sorted(row)[:3]
    ['ess_fraction', 'free_energy_error_reweighted', 'free_energy_error_unweighted']
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import Tensor

from pyro_snf.diagnostics.free_energy import histogram_profile, profile_error
from pyro_snf.distribution import StochasticNormalizingFlow
from pyro_snf.targets import LEFT_WELL_MASS, DoubleWell
from pyro_snf.targets.double_well import LOG_Z_1D, double_well_x1_energy
from pyro_snf.train import TrainHistory, fit
from pyro_snf.weights import ImportanceWeights, sanitize_log_weights

#: Bin edges of the free-energy profile along ``x1``: 30 bins on ``[-3, 3]``.
EDGES = torch.linspace(-3.0, 3.0, 31, dtype=torch.float64)


def exact_double_well_profile(edges: Tensor, grid_per_bin: int = 2001) -> Tensor:
    """Exact bin-averaged free energy of ``x1`` under the double well.

    ``F(b) = -log(∫_b p(x1) dx1 / width)`` by the trapezoid rule on ``grid_per_bin`` points per bin.

    Example::

        >>> F = exact_double_well_profile(EDGES)
        >>> tuple(F.shape), bool((F - F.min()).max() > 10)
        ((30,), True)
    """
    edges = edges.to(torch.float64).cpu()
    out = []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        x = torch.linspace(lo, hi, grid_per_bin, dtype=torch.float64)
        p = torch.exp(-double_well_x1_energy(x) - LOG_Z_1D)
        out.append(-torch.log(torch.trapezoid(p, x) / (hi - lo)))
    return torch.stack(out)


def free_energy_profile(x: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """Free-energy profile along ``x1`` on :data:`EDGES` of samples ``x`` ``(n, 2)`` (reweighted
    when ``log_weights`` are given)."""
    return histogram_profile(x[:, 0], EDGES, log_weights)


def free_energy_error(profiles: Iterable[Tensor]) -> float:
    """The paper's ``sqrt(bias^2 + std^2)`` (kT) of the profiles (:func:`free_energy_profile`) of
    independent sample sets against :func:`exact_double_well_profile`."""
    return profile_error(torch.stack(list(profiles)), exact_double_well_profile(EDGES), EDGES)["error"]


def train_paper_protocol(snf: StochasticNormalizingFlow, data: Tensor,
                         iterations: tuple[int, int] = (300, 300), batch_size: int = 128,
                         lr: float = 5e-3, progress: bool = False) -> TrainHistory:
    """Maximum likelihood, then 50/50 maximum likelihood + reverse KL (one Adam optimizer)."""
    optimizer = torch.optim.Adam(snf.parameters(), lr=lr)
    history = fit(snf, num_iterations=iterations[0], batch_size=batch_size, data=data, kl_weight=0.0,
                  ml_weight=1.0, optimizer=optimizer, progress=progress)
    if iterations[1] > 0:
        fit(snf, num_iterations=iterations[1], batch_size=batch_size, data=data, kl_weight=0.5, ml_weight=0.5,
            optimizer=optimizer, progress=progress, history=history)
    return history


def evaluate(snf: StochasticNormalizingFlow, target: DoubleWell, num_sets: int = 20,
             set_size: int = 100_000) -> dict[str, float]:
    """Free-energy errors (unweighted and reweighted), log Z error, ESS fraction, left-well mass.

    ``snf`` is anything with ``sample_and_log_weight((n,)) -> (x, log_w)``.
    """
    start = time.perf_counter()
    plain, reweighted, xs, lws = [], [], [], []
    for _ in range(num_sets):
        x, log_w = snf.sample_and_log_weight((set_size,))
        log_w = sanitize_log_weights(log_w, warn=False)
        plain.append(free_energy_profile(x))
        reweighted.append(free_energy_profile(x, log_w))
        xs.append(x[:, 0].double().cpu())
        lws.append(log_w.double().cpu())
    seconds = time.perf_counter() - start
    x1, iw = torch.cat(xs), ImportanceWeights(torch.cat(lws))
    left = (x1 < 0).double()
    return {
        "free_energy_error_unweighted": free_energy_error(plain),
        "free_energy_error_reweighted": free_energy_error(reweighted),
        "log_Z_error": float(iw.log_evidence) - target.log_Z,
        "log_Z_stderr": float(iw.log_evidence_stderr),
        "ess_fraction": float(iw.ess_fraction),
        "left_mass_unweighted": float(left.mean()),
        "left_mass_reweighted": float((iw.normalized_weights * left).sum()),
        "left_mass_exact": LEFT_WELL_MASS,
        "sampling_seconds": seconds,
        "samples_per_second": num_sets * set_size / seconds,
    }
