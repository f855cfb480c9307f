"""``sample_posterior``: one call from a Pyro model to weighted posterior draws and its log evidence.

Algorithm (``u``: the model's unconstrained energy, :class:`~pyro_snf.infer.potential.ModelPotential`;
``Z = int exp(-u) dx`` is the evidence):

1. **Modes**: multi-start MAP and Laplace approximations (:func:`~pyro_snf.infer.multistart.find_modes`);
   modes with Laplace mass fraction ``< 1e-3`` are dropped, at most ``max_modes`` kept.
2. **One guide per mode, whitened**: for mode ``k`` (optimum ``m_k``, ``C_k C_k^T = H_k^-1``) an
   :class:`~pyro_snf.infer.AutoSNF` is fitted to the model ``z -> exp(-u(m_k + C_k z)) |det C_k|`` (same
   ``Z``; the original model runs conditioned on ``T(m_k + C_k z)``), starting at ``N(0, I)``: exactly
   the Laplace approximation. Training works in posterior-sd units, so scales 80x apart or
   correlations of -0.99 cost nothing. README recipe: ``Trace_ELBO(num_particles,
   vectorize_particles=True)``, ClippedAdam ``lr -> lr / 10``, ``num_svi_steps - num_block_steps``
   steps in ``without_blocks()``, then ``num_block_steps`` in ``adapting()``.
3. **Exact combination**: ``x`` belongs to the region ``R_k`` of the mode maximising
   ``log mass_k + log N(x; m_k, H_k^-1)`` (:func:`~pyro_snf.infer.multistart.assign_modes`, a fixed
   partition). Guide ``k`` draws ``n_k`` particles (proportional to the Laplace masses, at least
   ``min(10%, 50%/K)`` each) weighted ``w n / n_k`` inside ``R_k`` and 0 outside: ``mean(w) =
   sum_k Zhat_k``, each term unbiased for ``int_{R_k} exp(-u)``, so the evidence is unbiased and
   self-normalised expectations consistent. The iid standard error of the pooled weights is
   conservative when the allocation is off. One mode: plain importance sampling.
   With one mode whose Laplace start is degenerate (no positive-definite Hessian: a funnel's spike)
   or only diagonal (``D > max_dense_dim``), a diagonal Gaussian fitted by the ELBO from the prior
   median replaces it if its ELBO is higher (:mod:`~pyro_snf.infer.gaussian_start`).
4. **Non-centred refit** (``reparam="auto"``): if those weights are unreliable (PSIS k-hat > 0.7 or
   ESS < 20) and the model has latent Normal sites, steps 1-3 run again on the model with every such
   site non-centred (:mod:`~pyro_snf.infer.decenter`; same evidence): a funnel's joint MAP collapses
   (``tau -> 0``), its non-centred twin has a proper one.
5. **Pooling** (:mod:`~pyro_snf.infer.pooling`): the reliable samplers among the guides (one or two
   runs) and the prior check's draws are combined by inverse variance, each share fixed before the
   weights are pooled, so the evidence stays unbiased for fixed shares; none reliable: the guides.

Checks (a ``UserWarning`` each, also listed in ``result.warnings``): PSIS k-hat > 0.7 (and above
0.5: the SE is optimistic); a mode with Laplace mass fraction >= 1% whose region holds under a tenth
of that in the weighted draws and near which (chi-square 99.9% Mahalanobis radius) no resampled draw
lies ("the guide may miss a mode at ..."); over half of a guide's draws outside its region (it
drifted to another mode); a mode >= 1% left without a guide (``max_modes``); the particles' two
halves giving log evidences over 4 combined SEs apart; importance sampling from the prior
(``num_prior_samples`` draws: independent, unbiased in ``Z``, usually noisy) giving a log evidence
over 4 combined SEs *above* the guides'.

**What cannot be detected.** Importance weights only see where the proposal goes: mass in a region
that no guide visits contributes nothing, and every weight-based diagnostic (SE, ESS, k-hat, the
halves) looks fine without it. Only two checks look beyond the guides: the multi-start (it finds a
mode only if some start's basin leads there) and the prior estimate (it sees a missed mode only if
enough prior draws land in it; informative data make it blind). With ``num_starts=0`` and an
``init_loc_fn`` on one of two symmetric modes the guides' estimate is ``log Z - log 2`` with a tiny SE;
only the prior check can flag it (and then the pooling drops the guides for the prior draws); with
``num_prior_samples=0`` that result comes back without a warning.

Result: an :class:`~pyro_snf.infer.result.ImportanceResult` (constrained draws of every latent and
``pyro.deterministic`` site, ``sites`` for ArviZ; ``log_model``/``log_guide`` are ``None``: the pooled
weights are not ``log p - log q`` of one guide) with extra attributes ``warnings`` (list of str),
``modes`` (per mode: constrained ``loc``, ``laplace_log_mass``, ``log_evidence`` and
``log_evidence_stderr`` of its region, ``num_samples``, ``fraction_outside``, ``num_starts``;
``start`` of the first: ``"laplace"`` or ``"variational"``) and
``prior_log_evidence`` (``(value, stderr, ess)`` or ``None``). The guides are named
``_pyro_snf_sample_posterior_<k>``; their parameters are removed from Pyro's param store before
returning, which is otherwise left as it was.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide.initialization import init_to_median, init_to_value
from torch import Tensor
from tqdm.auto import tqdm

from pyro_snf.diagnostics.arviz_compat import psis_khat
from pyro_snf.infer import multistart as ms
from pyro_snf.infer.autoguide import AutoSNF
from pyro_snf.infer.decenter import decentered, normal_sites
from pyro_snf.infer.gaussian_start import better_start
from pyro_snf.infer.importance import importance_sample
from pyro_snf.infer.pooling import pool, reliable
from pyro_snf.infer.posterior_checks import checks, fmt, prior_draws
from pyro_snf.infer.potential import ModelPotential
from pyro_snf.infer.result import ImportanceResult, SiteInfo
from pyro_snf.infer.tracing import sample_sites, trace_model

__all__ = ["sample_posterior"]

_Z, _NAME = "_pyro_snf_z", "_pyro_snf_sample_posterior"


def sample_posterior(
    model: Callable[..., Any], *args: Any, num_samples: int = 10_000, seed: int | None = None,
    progress_bar: bool = True, num_starts: int = 16, num_svi_steps: int = 1000, num_block_steps: int = 50,
    num_blocks: int = 4, flow: str | Callable = "none", num_particles: int = 16, lr: float = 0.05,
    init_loc_fn: Callable | None = init_to_median, max_modes: int = 8, max_dense_dim: int = 300,
    num_prior_samples: int | None = None, guide_kwargs: dict | None = None, reparam: str | None = "auto",
    **model_kwargs: Any,
) -> ImportanceResult:
    """Weighted posterior draws and the log evidence of ``model(*args, **model_kwargs)``; see the
    module docstring for the algorithm, the checks and what they cannot see.

    :param num_samples: importance samples in the result (split over the modes).
    :param seed: ``pyro.set_rng_seed(seed)`` first, if given.
    :param progress_bar: a tqdm bar over the stages (multi-start, SVI steps per mode, sampling).
    :param num_starts: random prior starts of the multi-start MAP (plus the ``init_loc_fn`` point).
    :param num_svi_steps: SVI steps per mode, the last ``num_block_steps`` with the blocks on.
    :param num_blocks: stochastic (MALA) blocks of each :class:`~pyro_snf.infer.AutoSNF` guide.
    :param flow: its flow layers (``"none"``, ``"coupling"``, ``"iaf"``, ``"affine"``, callable).
    :param num_particles: ELBO particles per SVI step. :param lr: initial ClippedAdam learning rate
        (whitened units), decayed tenfold over the steps.
    :param init_loc_fn: the extra deterministic start (a Pyro ``init_to_*``; ``None``: none).
    :param max_modes: most modes that get a guide. :param max_dense_dim: above this latent dimension
        the Hessian is only estimated on its diagonal (Hutchinson), and the Laplace start is diagonal.
    :param num_prior_samples: prior draws of the prior check (default ``num_samples``; 0: off).
    :param guide_kwargs: more ``AutoSNF`` keywords (``block``, ``block_kwargs``, ``hidden_dims``, ...).
    :param reparam: ``"auto"``: when the guides' weights are unreliable and the model has latent Normal
        sites, fit again with them non-centred (Pyro's ``LocScaleReparam(centered=0)``) and pool both
        runs; ``None``: never.
    :returns: an :class:`~pyro_snf.infer.result.ImportanceResult` with ``warnings``, ``modes`` and
        ``prior_log_evidence`` attributes.

    The keyword names above are taken by this function: a model keyword argument with one of these
    names cannot be passed through (wrap the model in a closure instead). Cost: ``num_svi_steps``
    SVI steps per mode, ``D`` backward passes per Hessian; the model must be vectorisable under an
    outer ``pyro.plate`` (as for ``Trace_ELBO(vectorize_particles=True)``).
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    train = (num_svi_steps, num_block_steps, num_particles, lr,
             {"num_blocks": num_blocks, "flow": flow, **(guide_kwargs or {})})
    fit = (num_samples, num_starts, init_loc_fn, max_modes, max_dense_dim, train)
    with tqdm(total=2, disable=not progress_bar, desc="multi-start MAP") as bar:
        num_prior = num_samples if num_prior_samples is None else num_prior_samples
        prior = prior_draws(model, args, model_kwargs, num_prior)
        runs = [_fit_modes(model, args, model_kwargs, fit, prior, bar)]
        names = normal_sites(trace_model(model, args, model_kwargs))
        if reparam == "auto" and not reliable(runs[0]) and names:
            bar.set_description("non-centred")
            runs.append(_fit_modes(decentered(model), args, model_kwargs, fit, None, bar))
            label = f"non-centred ({', '.join(names)})"
            if reliable(runs[1]):  # the first run's failures matter no more: one line says why it is out
                runs[0].warnings = [f"the guides of the model as written were unreliable (k-hat "
                                    f"{runs[0].khat:.2f}): the {label} model's guides are used"]
            for run, kind in zip(runs, ("model as written", f"{label} model")):
                run.warnings = [w if w.startswith("the guides of") else f"{kind}: {w}" for w in run.warnings]
        res = pool(runs, prior)
        bar.update(1)
    for msg in res.warnings:
        warnings.warn(msg, UserWarning, stacklevel=2)
    return res


def _fit_modes(model: Callable, args: tuple, kwargs: dict, fit: tuple, prior: ImportanceResult | None,
               bar: Any) -> ImportanceResult:
    """Multi-start, one whitened AutoSNF per mode, the exact combination and the checks: the guides'
    result (``warnings``, ``modes``, ``prior_log_evidence`` set)."""
    num_samples, num_starts, init_loc_fn, max_modes, max_dense_dim, train = fit
    notes: list[str] = []
    pot = ModelPotential.from_model(model, *args, **kwargs)
    sites = _site_infos(pot)
    store = pyro.get_param_store()
    before = set(store.keys())
    all_modes = ms.find_modes(pot, num_starts, init_loc_fn, max_dense_dim)
    if not all_modes:
        raise RuntimeError("no start reached a finite energy: the model's density is zero or NaN at "
                           "every start (check the model and its data)")
    if not all_modes[0].positive_definite:
        notes.append("no start reached an optimum with a positive-definite Hessian (unbounded or "
                     "flat posterior?): the guide starts from a floored Laplace approximation")
    frac = ms.mass_fractions(all_modes)
    keep = [i for i in range(len(all_modes)) if frac[i] >= 1e-3][:max_modes]
    notes += [f"a mode at {fmt(pot, sites, all_modes[i].loc)} with Laplace mass fraction {frac[i]:.3f} "
              "got no guide (max_modes): its mass is missing" for i in range(len(all_modes))
              if i not in keep and frac[i] >= 0.01]
    modes, variational = [all_modes[i] for i in keep], False
    if len(modes) == 1 and (not modes[0].positive_definite or pot.dim > max_dense_dim):
        steps, _, particles, lr, _ = train  # a degenerate or diagonal Laplace start: try a fitted Gaussian
        modes[0], variational = better_start(pot, modes[0], steps, particles, lr)
        notes = [n for n in notes if not (variational and n.startswith("no start reached"))]
    if num_samples < 2 * len(modes):
        raise ValueError(f"num_samples = {num_samples} is too small for {len(modes)} modes (>= 2 each)")
    counts = _allocate(num_samples, ms.mass_fractions(modes))
    bar.update(1)
    bar.total += len(modes) * train[0] + 1
    bar.refresh()
    parts = []
    try:
        for k, (mode, n_k) in enumerate(zip(modes, counts)):
            bar.set_description(f"mode {k + 1}/{len(modes)}: SVI")
            parts.append(_fit_and_sample(pot, sites, mode, f"{_NAME}_{k}", n_k, train, bar))
    finally:
        for key in set(store.keys()) - before:
            if key.startswith(_NAME):
                del store[key]
    bar.set_description("checks")
    res, x = _combine(pot, sites, modes, counts, parts, num_samples)
    res.warnings = notes + checks(pot, sites, modes, counts, res, x, prior)
    res.modes[0]["start"] = "variational" if variational else "laplace"
    return res


def _allocate(n: int, frac: list[float]) -> list[int]:
    k = len(frac)
    floor = min(0.1, 0.5 / k)
    counts = [max(1, int(n * (floor + (1 - k * floor) * f))) for f in frac]
    counts[max(range(k), key=lambda i: frac[i])] += n - sum(counts)
    return counts


def _fit_and_sample(pot: ModelPotential, sites: dict[str, SiteInfo], mode: ms.Mode, name: str, n: int,
                    train: tuple, bar: Any) -> tuple[ImportanceResult, Tensor]:
    """Train one AutoSNF on the whitened model at ``mode``; ``n`` weighted draws and their ``x``."""
    num_svi_steps, num_block_steps, num_particles, lr, guide_kwargs = train
    wmodel = ms.whitened_model(pot, mode, {k: v.shape for k, v in sites.items()}, _Z)
    guide = AutoSNF(wmodel, init_loc_fn=init_to_value(values={_Z: torch.zeros_like(mode.loc)}),
                    init_scale=1.0, **guide_kwargs)
    guide._pyro_name = name  # its own parameter names in the param store
    guide()
    steps = max(int(num_svi_steps), 0)
    block_steps = min(max(int(num_block_steps), 0), steps) if guide.blocks else 0
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / max(steps, 1))})
    svi = SVI(wmodel, guide, optim, Trace_ELBO(num_particles, vectorize_particles=True,
              max_plate_nesting=pot.max_plate_nesting))
    with guide.without_blocks():
        for _ in range(steps - block_steps):
            svi.step()
            bar.update(1)
    adaptive = any(b.adapt_step_size for b in guide.blocks)
    with guide.adapting() if adaptive else nullcontext():
        for _ in range(block_steps):
            svi.step()
            bar.update(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = importance_sample(wmodel, guide, num_samples=n, warn=True)
    for w in caught:  # k-hat is checked on the pooled weights; re-emit the rest (zero weights)
        if "k-hat" not in str(w.message):
            warnings.warn(w.message, w.category, stacklevel=3)
    x = mode.loc + res.samples[_Z] @ mode.scale_tril.T
    return res, x


def _combine(pot: ModelPotential, sites: dict[str, SiteInfo], modes: list[ms.Mode], counts: list[int],
             parts: list[tuple[ImportanceResult, Tensor]], n: int) -> tuple[ImportanceResult, Tensor]:
    """Pool the per-mode draws: weight ``w n / n_k`` inside the mode's region, 0 outside."""
    log_w = []
    for k, ((res, x), n_k) in enumerate(zip(parts, counts)):
        lw = res.log_weights + math.log(n / n_k)
        log_w.append(torch.where(ms.assign_modes(modes, x) == k, lw, torch.full_like(lw, -math.inf)))
    log_w, x = torch.cat(log_w).detach(), torch.cat([x for _, x in parts]).detach()
    values, _ = pot.constrain(x)
    samples = {name: values[name].reshape((x.shape[0], *sites[name].shape)).detach() for name in sites}
    extra = {name: info for name, info in parts[0][0].sites.items() if name != _Z}  # pyro.deterministic
    samples.update({name: torch.cat([r.samples[name] for r, _ in parts]) for name in extra})
    return ImportanceResult(log_weights=log_w, samples=samples, khat=psis_khat(log_w),
                            num_nonfinite=sum(r.num_nonfinite for r, _ in parts), sites={**sites, **extra}), x


def _site_infos(pot: ModelPotential) -> dict[str, SiteInfo]:
    tr = trace_model(pot.model, pot.args, pot.kwargs)
    names = {s.name for s in pot.sites}
    return {s["name"]: SiteInfo(shape=tuple(s["value"].shape), event_dim=int(s["fn"].event_dim),
                                plates={f.dim: f.name for f in s["cond_indep_stack"] if f.vectorized})
            for s in sample_sites(tr) if s["name"] in names}


