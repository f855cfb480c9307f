"""Training step time of the pyro_snf SNF vs normflows' SNF of the same architecture, interleaved.

On a shared machine the load changes between two methods' training runs, so their mean step times
(the ``train s`` columns) are not comparable. Here both models of a config take turns: after a
warm-up, ``rounds`` alternating rounds of ``steps`` training steps each (same loss, batch and data),
and the median per-step time of each is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks import energy_methods, normflows_methods
from benchmarks.common import CountingPotential, resampled_draws
from benchmarks.configs import EnergyConfig
from pyro_snf.train import fit


def _pyro_snf_step(cfg: EnergyConfig, data: Tensor | None) -> tuple[Callable[[], None], Tensor | None]:
    potential = CountingPotential(cfg.make_target())
    snf = energy_methods.build(cfg, potential, "snf")
    energy_methods.zero_init(snf)
    optimizer = torch.optim.Adam(snf.parameters(), lr=cfg.lr)
    last = cfg.plan()[-1]
    if data is None and last.ml_weight > 0:
        data = resampled_draws(lambda n: snf.sample_and_log_weight((n,)), cfg.refresh_size)

    def step() -> None:
        fit(snf, num_iterations=1, batch_size=cfg.batch_size, kl_weight=last.kl_weight,
            ml_weight=last.ml_weight, data=data, optimizer=optimizer, clip_grad_norm=cfg.clip_grad_norm,
            progress=False)

    return step, data


def _normflows_step(cfg: EnergyConfig, data: Tensor | None) -> Callable[[], None]:
    model = normflows_methods.build(cfg, CountingPotential(cfg.make_target()))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    last = cfg.plan()[-1]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        if last.ml_weight > 0:
            loss = last.ml_weight * model.forward_kld(data[torch.randint(len(data), (cfg.batch_size,))])
        if last.kl_weight > 0:
            loss = loss + last.kl_weight * model.reverse_kld(cfg.batch_size)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm or float("inf"))
        optimizer.step()

    return step


def interleaved_step_times(cfg: EnergyConfig, data: Tensor | None, rounds: int = 5, steps: int = 10,
                           warmup: int = 3) -> dict[str, float]:
    """Median seconds per training step (loss of the protocol's last stage) of both implementations,
    measured in alternating rounds; ``{}`` when normflows is not installed."""
    if not normflows_methods.available():
        return {}
    ours, data = _pyro_snf_step(cfg, data)
    theirs = _normflows_step(cfg, data)
    times: dict[str, list[float]] = {"pyro_snf": [], "normflows": []}
    for _ in range(warmup):
        ours()
        theirs()
    for _ in range(rounds):
        for name, step in (("pyro_snf", ours), ("normflows", theirs)):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}
