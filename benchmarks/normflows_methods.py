"""normflows (PyPI ``normflows``) SNFs of the same architecture as the pyro_snf SNF of a config.

Layer for layer as :func:`pyro_snf.architectures.snf_layers`: RealNVP couplings
(``normflows.flows.AffineCouplingBlock`` with an ``MLP`` of the same hidden sizes, followed by a
``Permute(mode="swap")``), and stochastic layers at the same betas with normflows' own classes:

- ``metropolis`` -> ``normflows.flows.MetropolisHastings`` with a ``DiagGaussianProposal`` of the
  same scale and steps (normflows' proposal scale is a buffer: not learnable);
- ``hmc`` -> ``num_steps`` x ``normflows.flows.HamiltonianMonteCarlo`` (``num_leapfrog_steps`` each,
  learnable per-dimension step and mass);
- ``mala`` -> ``num_steps`` x ``HamiltonianMonteCarlo`` with one leapfrog step, which is MALA with
  ``eps = h^2 / 2`` (normflows has no MALA layer).

Annealed layers target ``normflows.distributions.LinearInterpolation(target, base, beta)``; the
target wraps the energy as ``log_prob = -u``. Training uses ``NormalizingFlow.reverse_kld`` and
``forward_kld``; importance log-weights are ``-u(x) - log_q`` from ``NormalizingFlow.sample``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmarks.common import (
    CountingPotential,
    RunResult,
    Timer,
    probe_ess_fraction,
    resampled_draws,
    sample_in_chunks,
)
from benchmarks.configs import EnergyConfig

try:
    import normflows as nf
except ImportError:  # optional dependency (extras "benchmarks")
    nf = None

METHOD = "normflows SNF (same arch.)"


def available() -> bool:
    return nf is not None


def _target(potential: CountingPotential) -> nn.Module:
    class EnergyTarget(nf.distributions.Target):
        """``log_prob = -u``: normflows' target protocol around an energy."""

        def log_prob(self, z: Tensor) -> Tensor:
            return -potential(z)

    return EnergyTarget()


def _stochastic(cfg: EnergyConfig, interp: object, dim: int) -> list[nn.Module]:
    kw = cfg.block_kwargs
    step, steps = float(kw.get("step_size", 0.1)), int(kw.get("num_steps", 1))
    if cfg.block == "metropolis":
        proposal = nf.distributions.DiagGaussianProposal((dim,), step)
        return [nf.flows.MetropolisHastings(interp, proposal, steps)]
    if cfg.block in ("hmc", "mala"):
        leap = int(kw.get("num_leapfrog_steps", 5)) if cfg.block == "hmc" else 1
        h = step if cfg.block == "hmc" else math.sqrt(2.0 * step)
        log_h = torch.full((dim,), math.log(h))
        return [nf.flows.HamiltonianMonteCarlo(interp, leap, log_h.clone(), torch.zeros(dim))
                for _ in range(steps)]
    raise ValueError(f"no normflows equivalent of block {cfg.block!r}")


if nf is not None:

    class FixedScale(nf.flows.Flow):
        """``z -> scale * z``, what ``snf_layers(flow_scale=)`` puts around each flow block."""

        def __init__(self, scale: float, dim: int) -> None:
            super().__init__()
            self.scale, self.log_det = scale, dim * math.log(scale)

        def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
            return self.scale * z, z.new_full(z.shape[:1], self.log_det)

        def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
            return z / self.scale, z.new_full(z.shape[:1], -self.log_det)


def build(cfg: EnergyConfig, potential: CountingPotential) -> nn.Module:
    """``normflows.NormalizingFlow`` with the layers of ``cfg``'s SNF."""
    dim = potential.dim
    target = _target(potential)
    base = nf.distributions.DiagGaussian(dim, trainable=False)
    base.log_scale.fill_(math.log(cfg.base_scale))
    betas = cfg.betas or (torch.linspace(0, 1, cfg.num_stages).tolist()
                          if cfg.num_stages > 1 else [1.0])
    half = dim // 2
    flows: list[nn.Module] = []
    for i, beta in enumerate(betas):
        if i > 0 or cfg.prior_block:
            flows += _stochastic(cfg, nf.distributions.LinearInterpolation(target, base, float(beta)), dim)
        if cfg.flow_scale is not None:
            flows.append(FixedScale(1.0 / cfg.flow_scale, dim))
        for _ in range(cfg.num_couplings):
            net = nf.nets.MLP([half, *cfg.hidden_dims, 2 * (dim - half)], init_zeros=cfg.identity_init)
            flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(dim, mode="swap")]
        if cfg.flow_scale is not None:
            flows.append(FixedScale(cfg.flow_scale, dim))
    if cfg.final_block:
        flows += _stochastic(cfg, nf.distributions.LinearInterpolation(target, base, 1.0), dim)
    return nf.NormalizingFlow(base, flows, target)


def _draw(model: nn.Module, potential: CountingPotential, n: int) -> tuple[Tensor, Tensor]:
    """Samples and log-weights; HMC layers need autograd, so parameters are frozen instead of no_grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            x, log_q = model.sample(n)
            log_w = -potential(x.detach()).detach() - log_q.detach()
    finally:
        for p in params:
            p.requires_grad_(True)
    return x.detach(), log_w


def run(cfg: EnergyConfig, data: Tensor | None) -> RunResult:
    """Build, train (same protocol and budget as the pyro_snf SNF) and sample."""
    result = RunResult(method=METHOD, target=cfg.key)
    if nf is None:
        result.status = "skipped: normflows not installed (pip install normflows)"
        return result
    potential = CountingPotential(cfg.make_target())
    model = build(cfg, potential)
    result.config = f"{len(model.flows)} normflows layers"
    draw = lambda n: _draw(model, potential, n)  # noqa: E731
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    timer, probe_evals, skipped, start_evals = Timer(), 0, 0, potential.evals
    for run in cfg.plan():
        with timer.running():
            if run.refresh:
                data = resampled_draws(draw, cfg.refresh_size)
            for step in range(run.start, run.stop):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * cfg.lr_final_factor ** (step / max(cfg.train_steps - 1, 1))
                optimizer.zero_grad(set_to_none=True)
                loss = 0.0
                if run.ml_weight > 0:
                    batch = data[torch.randint(len(data), (cfg.batch_size,))]
                    loss = run.ml_weight * model.forward_kld(batch)
                if run.kl_weight > 0:
                    loss = loss + run.kl_weight * model.reverse_kld(cfg.batch_size)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm or float("inf"))
                if torch.isfinite(loss) and torch.isfinite(norm):
                    optimizer.step()
                else:
                    skipped += 1
        if run.probe:
            before = potential.evals
            result.train_curve.append((timer.seconds, probe_ess_fraction(draw, cfg.probe_size)))
            probe_evals += potential.evals - before
    result.train_seconds = timer.seconds
    result.train_evals = potential.evals - start_evals - probe_evals
    result.step_seconds = timer.seconds / cfg.train_steps
    if skipped:
        result.notes.append(f"{skipped} training steps skipped (non-finite loss or gradient)")
    sample_in_chunks(draw, cfg.num_chunks, cfg.chunk_size, result, potential)
    return result
