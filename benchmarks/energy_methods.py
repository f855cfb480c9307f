"""pyro_snf methods on energy targets (SNF, flow without blocks, AIS) and Pyro's NUTS reference.

All three pyro_snf variants are built from the same :class:`~benchmarks.configs.EnergyConfig` by
:func:`pyro_snf.architectures.make_snf`: ``"snf"`` as configured, ``"flow"`` with ``block=None``
(the same flow, no stochastic blocks), ``"ais"`` with ``flow=None`` (the same blocks, no flow:
annealed importance sampling). The SNF and the flow share the training protocol and budget
(:func:`train_energy`); AIS is not trained (it has no flow; its blocks keep their initial step sizes).
"""

from __future__ import annotations

import math
import time

import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from torch import Tensor

from benchmarks.common import (
    CountingPotential,
    RunResult,
    Timer,
    mcmc_ess,
    probe_ess_fraction,
    resampled_draws,
    sample_in_chunks,
)
from benchmarks.configs import EnergyConfig
from pyro_snf.architectures import make_snf
from pyro_snf.distribution import StochasticNormalizingFlow
from pyro_snf.train import fit

VARIANTS = {"snf": "pyro_snf SNF", "flow": "same flow, no blocks", "ais": "AIS (blocks, no flow)"}


def base_dist(cfg: EnergyConfig, dim: int) -> dist.TorchDistribution:
    """``N(0, base_scale^2 I)``, without argument validation: the blocks anneal from its log-density and
    a diverging trajectory (HMC in the funnel's neck) must give a non-finite energy that the block
    rejects, not a ValueError from torch's validation."""
    scale = torch.full((dim,), cfg.base_scale)
    return dist.Normal(torch.zeros(dim), scale, validate_args=False).to_event(1)


def build(cfg: EnergyConfig, potential: CountingPotential, variant: str) -> StochasticNormalizingFlow:
    """The SNF of ``cfg`` (``variant="snf"``), its flow alone (``"flow"``) or its blocks alone (``"ais"``)."""
    kwargs = dict(num_stages=cfg.num_stages, num_couplings=cfg.num_couplings,
                  hidden_dims=cfg.hidden_dims, block=cfg.block, block_kwargs=dict(cfg.block_kwargs),
                  betas=cfg.betas, prior_block=cfg.prior_block, final_block=cfg.final_block,
                  flow_scale=cfg.flow_scale)
    if variant == "flow":
        kwargs["block"] = None
    elif variant == "ais":
        kwargs["flow"] = None
    elif variant != "snf":
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return make_snf(potential, potential.dim, base_dist=base_dist(cfg, potential.dim), **kwargs)


def describe(snf: StochasticNormalizingFlow) -> str:
    """A compact layer summary, e.g. ``Metropolis(b=0) 2xAffineCoupling ...``."""
    parts: list[str] = []
    for layer in snf.layers:
        name = type(layer).__name__.replace("Block", "")
        if name == "Permute":
            continue
        if hasattr(layer, "num_steps"):
            name += f"(b={float(layer.beta):.2g})"
        if parts and parts[-1].split("x", 1)[-1] == name and name == "AffineCoupling":
            count = int(parts[-1].split("x")[0]) if "x" in parts[-1] else 1
            parts[-1] = f"{count + 1}x{name}"
        else:
            parts.append(name)
    return " ".join(parts)


def zero_init(snf: StochasticNormalizingFlow) -> None:
    """Zero the output layer of every coupling network: each flow block starts as the identity
    (as normflows' ``MLP(init_zeros=True)`` and AutoSNF), so an untrained SNF is exactly its AIS."""
    for layer in snf.layers:
        net = getattr(layer, "nn", None)
        if net is not None and hasattr(net, "layers"):
            torch.nn.init.zeros_(net.layers[-1].weight)
            torch.nn.init.zeros_(net.layers[-1].bias)


def train_energy(snf: StochasticNormalizingFlow, cfg: EnergyConfig, potential: CountingPotential,
                 result: RunResult, data: Tensor | None) -> None:
    """Train with the config's protocol (:meth:`~benchmarks.configs.EnergyConfig.plan`), probing
    the ESS fraction at segment ends (probe time and evaluations excluded from the training cost)."""
    params = list(snf.parameters())
    if not params:
        result.notes.append("no trainable parameters: not trained")
        return
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    draw = lambda n: snf.sample_and_log_weight((n,))  # noqa: E731
    timer, probe_evals, skipped, start_evals = Timer(), 0, 0, potential.evals
    for run in cfg.plan():
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * cfg.lr_final_factor ** (run.start / max(cfg.train_steps - 1, 1))
        with timer.running():
            if run.refresh:
                data = resampled_draws(draw, cfg.refresh_size)
            history = fit(snf, num_iterations=run.stop - run.start, batch_size=cfg.batch_size,
                          kl_weight=run.kl_weight, ml_weight=run.ml_weight, data=data, optimizer=optimizer,
                          clip_grad_norm=cfg.clip_grad_norm, progress=False)
        skipped += history.num_skipped_steps
        if run.probe:
            before = potential.evals
            result.train_curve.append((timer.seconds, probe_ess_fraction(draw, cfg.probe_size)))
            probe_evals += potential.evals - before
    result.train_seconds = timer.seconds
    result.train_evals = potential.evals - start_evals - probe_evals
    result.step_seconds = timer.seconds / cfg.train_steps
    if skipped:
        result.notes.append(f"{skipped} training steps skipped (non-finite gradient)")


def run_pyro_snf(cfg: EnergyConfig, variant: str, data: Tensor | None, name: str | None = None) -> RunResult:
    """Build, train and sample one pyro_snf variant on ``cfg``'s target."""
    potential = CountingPotential(cfg.make_target())
    result = RunResult(method=name or VARIANTS[variant], target=cfg.key)
    snf = build(cfg, potential, variant)
    if cfg.identity_init:
        zero_init(snf)
    result.config = describe(snf)
    if variant == "ais":
        result.notes.append("not trained: AIS uses the blocks with their initial step sizes")
    else:
        train_energy(snf, cfg, potential, result, data)
    draw = lambda n: snf.sample_and_log_weight((n,))  # noqa: E731
    sample_in_chunks(draw, cfg.num_chunks, cfg.chunk_size, result, potential)
    steps = [round(float(b.step_size.detach()), 3) for b in snf.blocks]
    if steps:
        rates = [round(float(i.acceptance_rate), 2) for i in snf.info if i is not None]
        result.notes.append(f"step sizes {steps}, acceptance {rates}")
    return result


def run_nuts(cfg: EnergyConfig, seed: int) -> RunResult:
    """One NUTS chain (Pyro, diagonal mass matrix adaptation) from a base draw. The chain is cut into
    ``num_chunks`` consecutive segments (the "sample sets" of the metrics)."""
    potential = CountingPotential(cfg.make_target())
    result = RunResult(method="Pyro NUTS (1 chain)", target=cfg.key, log_weights=None)
    torch.manual_seed(seed)
    init = base_dist(cfg, potential.dim).sample()
    stamps: list[float] = []
    kernel = NUTS(potential_fn=lambda p: potential(p["x"]), adapt_step_size=True,
                  max_tree_depth=cfg.nuts_max_tree_depth)
    mcmc = MCMC(kernel, num_samples=cfg.nuts_samples, warmup_steps=cfg.nuts_warmup,
                initial_params={"x": init}, disable_progbar=True,
                hook_fn=lambda kernel, params, stage, i: stamps.append(time.perf_counter()))
    start = time.perf_counter()
    mcmc.run()
    total = time.perf_counter() - start
    chain = mcmc.get_samples()["x"].detach()
    result.train_seconds = stamps[cfg.nuts_warmup - 1] - start if cfg.nuts_warmup else 0.0
    result.sample_seconds = total - result.train_seconds
    evals = potential.evals
    result.train_evals = round(evals * cfg.nuts_warmup / (cfg.nuts_warmup + cfg.nuts_samples))
    result.sample_evals = evals - result.train_evals
    result.chunks = list(torch.tensor_split(chain, min(cfg.num_chunks, len(chain))))
    result.config = f"{cfg.nuts_warmup} warmup + {cfg.nuts_samples} draws, init from the base"
    result.notes.append("warmup counted as training; evaluations split pro rata (Pyro does not report "
                        "them per phase)")
    for k in sorted({max(len(chain) * j // 5, 4) for j in range(1, 6)}):
        t = stamps[cfg.nuts_warmup + k - 1] - start if len(stamps) >= cfg.nuts_warmup + k else total
        result.ess_curve.append((t, mcmc_ess(chain[:k]) if k >= 4 else math.nan))
    return result
