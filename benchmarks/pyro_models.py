"""Pyro-model targets: Bayesian logistic regression (ionosphere, sonar, german) and eight schools.

Guides (``AutoSNF``, Pyro's ``AutoIAFNormal`` and ``AutoMultivariateNormal``, which is also the
AutoSNF configuration without its block) are trained with the same SVI budget (steps, particles,
optimiser) and then scored by :func:`pyro_snf.infer.importance.importance_sample` (log evidence,
ESS, k-hat); Pyro's NUTS runs one chain as the cost reference. Model evaluations are counted by
:class:`CountedModel` (particles of the first latent site per model call: SVI, the guide's own
potential, importance sampling and NUTS alike).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from benchmarks.common import RunResult, Timer, khat, mcmc_ess
from benchmarks.references import exact_moments
from pyro_snf.examples.datasets import REFERENCE_LOG_EVIDENCE, eight_schools, load_logistic
from pyro_snf.examples.models import eight_schools_noncentered, logistic_regression

try:
    from pyro_snf.infer.autoguide import AutoSNF
    from pyro_snf.infer.importance import importance_sample
except ImportError:  # the inference module is developed alongside
    AutoSNF = importance_sample = None


class _CountSite(Messenger):
    def __init__(self, owner: CountedModel) -> None:
        super().__init__()
        self.owner = owner

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] == self.owner.site and msg["value"] is not None:
            self.owner.evals += msg["value"].numel() // self.owner.site_numel


class CountedModel:
    """A model that counts its evaluations (particles of ``site`` per call, any vectorisation).

    The counter sits innermost, so it also sees runs hidden from outer handlers (``poutine.block``).
    """

    def __init__(self, model: Callable, site: str, site_numel: int) -> None:
        self.model, self.site, self.site_numel, self.evals = model, site, site_numel, 0
        self.__name__ = getattr(model, "__name__", "model")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _CountSite(self):
            return self.model(*args, **kwargs)


@dataclass(frozen=True)
class PyroTarget:
    """A Pyro model with its data."""

    key: str
    title: str
    model: Callable
    args: tuple
    first_site: str
    site_numel: int


def pyro_targets(suite: str) -> list[PyroTarget]:
    """Logistic regression on the three UCI sets and eight schools (both suites)."""
    out = []
    for name, title in [("ionosphere", "Logistic regression, ionosphere (D 35)"),
                        ("sonar", "Logistic regression, sonar (D 61)"),
                        ("german", "Logistic regression, german credit (D 25)")]:
        X, y = load_logistic(name)
        out.append(PyroTarget(name, title, logistic_regression, (X, y), "w", X.shape[1]))
    data = eight_schools()
    out.append(PyroTarget("eight_schools", "Eight schools, non-centred (D 10)", eight_schools_noncentered,
                          (data["J"], data["sigma"], data["y"]), "mu", 1))
    return out


@dataclass(frozen=True)
class PyroBudget:
    """SVI and sampling budgets shared by every guide; NUTS budget."""

    svi_steps: int = 800
    particles: int = 16
    lr: float = 0.05
    lr_final_factor: float = 0.1
    num_chunks: int = 4
    chunk_size: int = 2500
    num_segments: int = 4
    probe_size: int = 500
    nuts_samples: int = 400
    nuts_warmup: int = 200
    nuts_max_tree_depth: int = 10
    block_steps: int = 40  # AutoSNF: the last SVI steps run with the blocks on (stage-wise training)


BUDGETS = {"quick": PyroBudget(svi_steps=4, particles=2, num_chunks=2, chunk_size=128, num_segments=2,
                               probe_size=64, nuts_samples=10, nuts_warmup=5, nuts_max_tree_depth=3,
                               block_steps=2),
           "full": PyroBudget()}


def _guides(target: PyroTarget, model: Callable) -> dict[str, Callable[[], Any]]:
    dim = target.site_numel if target.key != "eight_schools" else 10
    return {
        "AutoSNF": lambda: AutoSNF(model, flow="none", block="mala", num_blocks=8,
                                   block_kwargs={"num_steps": 1, "step_size": 0.5}, init_scale=0.1),
        "Pyro AutoIAFNormal": lambda: AutoIAFNormal(model, hidden_dim=[2 * dim], num_transforms=2),
        "Pyro AutoMultivariateNormal": lambda: AutoMultivariateNormal(model, init_scale=0.1),
    }


GUIDE_CONFIG = {
    "AutoSNF": "full-rank affine base (init scale 0.1) and 8 MALA blocks (1 step each, beta 1/9 ... 8/9 "
               "from the fitted Gaussian to the posterior, step size adapted toward acceptance 0.574 from "
               "0.5); stage-wise: the first 760 SVI steps with the blocks off (`without_blocks`), the last "
               "40 with them on (inside `adapting()`)",
    "Pyro AutoIAFNormal": "2 IAF transforms, hidden 2D",
    "Pyro AutoMultivariateNormal": "full-rank Gaussian, init scale 0.1 (also the ablation 'AutoSNF "
                                   "without blocks': that guide is this same Gaussian family)",
}


def _flatten(samples: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([samples[n].reshape(samples[n].shape[0], -1) for n in names], dim=-1)


def latent_names(target: PyroTarget) -> list[str]:
    """The model's latent sites in trace order (the column order of flattened draws)."""
    trace = poutine.trace(target.model).get_trace(*target.args)
    return [name for name, site in trace.iter_stochastic_nodes() if not site_is_subsample(site)]


def _stage(guide: Any, blocks_off: bool) -> contextlib.AbstractContextManager:
    """AutoSNF: the blocks off (stage one), or on with their step sizes adapting (stage two)."""
    if not hasattr(guide, "without_blocks"):
        return contextlib.nullcontext()
    return guide.without_blocks() if blocks_off else guide.adapting()


def run_guide(target: PyroTarget, name: str, budget: PyroBudget) -> RunResult:
    """Train one guide with SVI, then importance-sample it against the model."""
    result = RunResult(method=name, target=target.key, config=GUIDE_CONFIG.get(name, ""))
    if importance_sample is None or (AutoSNF is None and name.startswith("AutoSNF")):
        result.status = "skipped: pyro_snf.infer not available"
        return result
    pyro.clear_param_store()
    model = CountedModel(target.model, target.first_site, target.site_numel)
    guide = _guides(target, model)[name]()
    optim = pyro.optim.ClippedAdam({"lr": budget.lr, "clip_norm": 10.0,
                                    "lrd": budget.lr_final_factor ** (1.0 / budget.svi_steps)})
    elbo = Trace_ELBO(budget.particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, optim, elbo)
    timer, probe_evals, nonfinite = Timer(), 0, 0
    bounds = torch.linspace(0, budget.svi_steps, budget.num_segments + 1).round().long().tolist()
    blocks_from = budget.svi_steps - budget.block_steps if hasattr(guide, "without_blocks") else 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        with timer.running():
            for step in range(lo, hi):
                with _stage(guide, step < blocks_from):
                    nonfinite += not math.isfinite(svi.step(*target.args))
        before = model.evals
        probe = importance_sample(model, guide, *target.args, num_samples=budget.probe_size, warn=False)
        probe_evals += model.evals - before
        result.train_curve.append((timer.seconds, probe.ess / probe.num_samples))
    result.train_seconds, result.step_seconds = timer.seconds, timer.seconds / budget.svi_steps
    result.train_evals = model.evals - probe_evals
    if nonfinite:
        result.notes.append(f"{nonfinite} SVI steps with a non-finite loss")
    names, sample_timer, before = latent_names(target), Timer(), model.evals
    result.log_weights = []
    for _ in range(budget.num_chunks):
        with sample_timer.running():
            res = importance_sample(model, guide, *target.args, num_samples=budget.chunk_size, warn=False)
        result.chunks.append(_flatten(res.samples, names).detach())
        result.log_weights.append(res.log_weights.detach().double())
        result.ess_curve.append((result.train_seconds + sample_timer.seconds, float(result.weights.ess)))
    result.sample_seconds, result.sample_evals = sample_timer.seconds, model.evals - before
    if hasattr(guide, "blocks") and guide.blocks:
        steps = [round(float(b.step_size.detach()), 3) for b in guide.blocks]
        rates = [round(float(i.acceptance_rate), 2) for i in guide.info if i is not None]
        result.notes.append(f"step sizes {steps}, acceptance {rates}")
    return result


def run_nuts(target: PyroTarget, budget: PyroBudget, seed: int,
             num_samples: int | None = None, warmup: int | None = None) -> RunResult:
    """One Pyro NUTS chain on the model (diagonal mass adaptation, init to the prior median)."""
    num_samples, warmup = num_samples or budget.nuts_samples, warmup or budget.nuts_warmup
    result = RunResult(method="Pyro NUTS (1 chain)", target=target.key, log_weights=None,
                       config=f"{warmup} warmup + {num_samples} draws")
    pyro.set_rng_seed(seed)
    model = CountedModel(target.model, target.first_site, target.site_numel)
    stamps: list[float] = []
    kernel = NUTS(model, max_plate_nesting=1, max_tree_depth=budget.nuts_max_tree_depth)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup,
                disable_progbar=True, hook_fn=lambda *a: stamps.append(time.perf_counter()))
    start = time.perf_counter()
    mcmc.run(*target.args)
    total = time.perf_counter() - start
    chain = _flatten(mcmc.get_samples(), latent_names(target)).detach()
    result.train_seconds = stamps[warmup - 1] - start
    result.sample_seconds = total - result.train_seconds
    result.train_evals = round(model.evals * warmup / (warmup + num_samples))
    result.sample_evals = model.evals - result.train_evals
    result.chunks = list(torch.tensor_split(chain, min(budget.num_chunks, len(chain))))
    for k in sorted({max(len(chain) * j // 4, 4) for j in range(1, 5)}):
        result.ess_curve.append((stamps[warmup + k - 1] - start, mcmc_ess(chain[:k])))
    result.notes.append("warmup counted as training; evaluations split pro rata")
    return result


def evaluate_pyro(result: RunResult) -> dict[str, float]:
    """Metric columns of a Pyro-model result: ESS, log Z error against
    :data:`pyro_snf.examples.datasets.REFERENCE_LOG_EVIDENCE`, k-hat; for eight schools the target
    metric is the largest ``|posterior mean - reference mean| / reference sd`` over the ten latent coordinates
    (reference: the exact moments by quadrature, cross-checked by the stored long NUTS run,
    :mod:`benchmarks.references`)."""
    x = result.samples.double()
    out: dict[str, float] = {"num_samples": len(x), "ess": result.ess()}
    out["ess_fraction"] = out["ess"] / len(x)
    out["ess_per_s"] = out["ess"] / max(result.total_seconds, 1e-9)
    out["ess_per_s_sampling"] = out["ess"] / max(result.sample_seconds, 1e-9)
    weights = torch.full((len(x),), 1.0 / len(x), dtype=torch.float64)
    if result.log_weights is not None:
        lw = torch.cat(result.log_weights).double()
        iw = result.weights
        ref, ref_se = REFERENCE_LOG_EVIDENCE[result.target]
        out.update(log_Z=float(iw.log_evidence), log_Z_stderr=float(iw.log_evidence_stderr),
                   log_Z_error=float(iw.log_evidence) - ref, reference_stderr=ref_se, khat=khat(lw),
                   zero_weight=iw.num_zero)
        weights = iw.normalized_weights
    if result.target == "eight_schools":
        ref_mean, ref_sd = (torch.tensor(v, dtype=torch.float64) for v in exact_moments())
        mean = (weights.unsqueeze(-1) * x).sum(0)
        out["target_metric"] = float(((mean - ref_mean).abs() / ref_sd).max())
    return out
