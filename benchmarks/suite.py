"""Run every method on every target in one process and write RESULTS.md, results.json and figures.

Energy targets (:mod:`benchmarks.configs`): pyro_snf SNF, the same flow without blocks, AIS (the
blocks without the flow), normflows' SNF of the same architecture (same protocol and budget) and
Pyro NUTS. Pyro models (:mod:`benchmarks.pyro_models`): AutoSNF, Pyro's AutoIAFNormal and
AutoMultivariateNormal (same SVI budget, all scored by ``importance_sample``) and Pyro NUTS. Every
method runs from the same seed; a failure becomes a row with its error, never a missing row.
"""

from __future__ import annotations

import json
import math
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks import energy_methods, normflows_methods, pyro_models
from benchmarks.common import RunResult, seed_everything
from benchmarks.configs import EnergyConfig, energy_configs
from benchmarks.environment import environment_lines
from benchmarks.goals import goal_rows
from benchmarks.metrics import TARGET_METRIC, evaluate
from benchmarks.references import reference_note
from benchmarks.report import COLUMNS, ess_figure, fmt, relative, row, sample_figure, table
from benchmarks.step_time import interleaved_step_times

ENERGY_METHODS = ["snf", "flow", "ais", "normflows", "nuts"]
PYRO_METHODS = ["AutoSNF", "Pyro AutoIAFNormal", "Pyro AutoMultivariateNormal", "nuts"]


def _guarded(method: str, target: str, fn: Callable[[], RunResult], log: Callable[[str], None]) -> RunResult:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except Exception as exc:  # a failing method is a row, not a crash
        log(traceback.format_exc())
        result = RunResult(method=method, target=target, status=f"failed: {type(exc).__name__}: {exc}"[:200])
    log(f"  {target:14s} {result.method:30s} {result.status[:60]:60s} {time.perf_counter() - start:7.1f} s")
    return result


def _energy_sections(suite: str, seed: int, out: Path, report: Path, log: Callable[[str], None],
                     only: set[str] | None) -> tuple[list[str], dict, list[str]]:
    lines, metrics, keys = [], {}, []
    for cfg in energy_configs(suite):
        if only and cfg.key not in only:
            continue
        keys.append(cfg.key)
        target = cfg.make_target()
        seed_everything(seed + 1)
        data = target.sample(100_000 if suite == "full" else 2_000) if cfg.uses_exact_samples else None
        results = []
        for method in ENERGY_METHODS:
            seed_everything(seed)
            if method in energy_methods.VARIANTS:
                fn = partial(energy_methods.run_pyro_snf, cfg, method, data)
                name = energy_methods.VARIANTS[method]
            elif method == "normflows":
                fn, name = partial(normflows_methods.run, cfg, data), normflows_methods.METHOD
            else:
                fn, name = partial(energy_methods.run_nuts, cfg, seed), "Pyro NUTS (1 chain)"
            results.append(_guarded(name, cfg.key, fn, log))
        if cfg.reverse_kl_rows and suite == "full":
            for variant in ("snf", "flow"):
                seed_everything(seed)
                name = f"{energy_methods.VARIANTS[variant]}, reverse KL"
                fn = partial(energy_methods.run_pyro_snf, replace(cfg, protocol="kl"), variant, None, name)
                results.append(_guarded(name, cfg.key, fn, log))
        seed_everything(seed)
        steps = _guarded_steps(cfg, data, suite, log)
        metrics[cfg.key] = {}
        rows = []
        for res in results:
            m = evaluate(res, target) if res.ok else {}
            m.update(total_seconds=res.total_seconds, step_seconds=res.step_seconds,
                     evals=res.train_evals + res.sample_evals)
            if res.method in steps:
                m["step_seconds_interleaved"] = steps[res.method]
            metrics[cfg.key][res.method] = m
            rows.append(row(res, m, TARGET_METRIC[cfg.key]))
        figs = _energy_figures(cfg.key, cfg.title, target, results, out)
        lines += _section(cfg.title, cfg.description, TARGET_METRIC[cfg.key], rows, results, figs, report)
    return lines, metrics, keys


def _guarded_steps(cfg: EnergyConfig, data: torch.Tensor | None, suite: str,
                   log: Callable[[str], None]) -> dict[str, float]:
    """Interleaved step times keyed by method name ({} if normflows is missing or it fails)."""
    rounds, steps, warmup = (5, 10, 3) if suite == "full" else (2, 2, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = interleaved_step_times(cfg, data, rounds=rounds, steps=steps, warmup=warmup)
    except Exception:  # a timing failure must not lose the run
        log(traceback.format_exc())
        return {}
    names = {"pyro_snf": energy_methods.VARIANTS["snf"], "normflows": normflows_methods.METHOD}
    return {names[k]: v for k, v in times.items()}


def _energy_figures(key: str, title: str, target: object, results: list[RunResult], out: Path) -> list[Path]:
    samples, curves = out / f"{key}_samples.png", out / f"{key}_ess.png"
    if key in ("double_well", "gmm40"):
        limits = (-3, 3) if key == "double_well" else (-50, 50)
        sample_figure(results, samples, title, scatter=True, limits=limits)
    elif key.startswith("many_well"):
        from pyro_snf.targets.double_well import LOG_Z_1D, double_well_x1_energy

        density = lambda g: np.exp(-double_well_x1_energy(torch.from_numpy(g)).numpy() - LOG_Z_1D)  # noqa: E731
        sample_figure(results, samples, title, density=density, limits=(-3, 3))
    else:
        density = lambda g: np.exp(-0.5 * (g / 3.0) ** 2) / (3.0 * math.sqrt(2 * math.pi))  # noqa: E731
        sample_figure(results, samples, title, density=density, label="v", limits=(-10, 10))
    ess_figure(results, curves, title)
    return [p for p in (samples, curves) if p.exists()]


def _pyro_sections(suite: str, seed: int, out: Path, report: Path, log: Callable[[str], None],
                   only: set[str] | None) -> tuple[list[str], dict, list[str]]:
    lines, metrics, keys = [], {}, []
    budget = pyro_models.BUDGETS[suite]
    for target in pyro_models.pyro_targets(suite):
        if only and target.key not in only:
            continue
        keys.append(target.key)
        results = []
        for method in PYRO_METHODS:
            seed_everything(seed)
            if method == "nuts":
                fn, name = partial(pyro_models.run_nuts, target, budget, seed), "Pyro NUTS (1 chain)"
            else:
                fn, name = partial(pyro_models.run_guide, target, method, budget), method
            results.append(_guarded(name, target.key, fn, log))
        metrics[target.key] = {}
        rows = []
        for res in results:
            m = pyro_models.evaluate_pyro(res) if res.ok else {}
            m.update(total_seconds=res.total_seconds, step_seconds=res.step_seconds,
                     evals=res.train_evals + res.sample_evals)
            metrics[target.key][res.method] = m
            rows.append(row(res, m, ""))
        figs = [out / f"{target.key}_samples.png", out / f"{target.key}_ess.png"]
        coord, label = (1, "tau") if target.key == "eight_schools" else (1, "w[1]")
        sample_figure(results, figs[0], target.title, coord=coord, label=label)
        ess_figure(results, figs[1], target.title)
        metric = "- (log Z error and k-hat are the target metrics)"
        if target.key == "eight_schools":
            metric = ("largest |posterior mean - exact mean| / exact sd over mu, tau, theta_tilde (exact "
                      f"moments by quadrature; {reference_note()})")
        desc = f"SVI: {budget.svi_steps} steps x {budget.particles} particles (ClippedAdam, lr {budget.lr} " \
               f"decaying to {budget.lr * budget.lr_final_factor:g}); importance sampling " \
               f"{budget.num_chunks} x {budget.chunk_size} draws; NUTS {budget.nuts_warmup} warmup + " \
               f"{budget.nuts_samples} draws."
        lines += _section(target.title, desc, metric, rows, results, [f for f in figs if f.exists()], report)
    return lines, metrics, keys


def _section(title: str, description: str, metric: str, rows: list[list[str]], results: list[RunResult],
             figures: list[Path], report: Path) -> list[str]:
    lines = [f"### {title}", "", description, "", f"Target metric: {metric}.", ""]
    lines += table(COLUMNS, rows) + [""]
    for res in results:
        text = "; ".join(filter(None, [res.config, *res.notes]))
        if text:
            lines.append(f"- {res.method}: {text}")
    lines += [""] + [f"![{p.stem}]({relative(p, report)})" for p in figures] + [""]
    return lines


def run_suite(suite: str, out: Path, report: Path, seed: int = 0, only: set[str] | None = None,
              command: str = "", log: Callable[[str], None] = print) -> dict:
    """Run the suite; write ``report`` (markdown), ``out/results.json`` and ``out/*.png``."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    energy_lines, energy_metrics, energy_keys = _energy_sections(suite, seed, out, report, log, only)
    pyro_lines, pyro_metrics, pyro_keys = _pyro_sections(suite, seed, out, report, log, only)
    metrics = {**energy_metrics, **pyro_metrics}
    minutes = (time.perf_counter() - start) / 60
    lines = [f"# pyro_snf benchmark suite: {suite}", ""]
    lines += environment_lines(command, seed, minutes) + [""]
    lines += ["## Goals", ""]
    if suite == "quick":
        lines += ["Quick suite: smoke-test budgets; the goals apply to the full suite.", ""]
    rows, limits = goal_rows(metrics, energy_keys, pyro_keys)
    lines += table(["target", "goal", "achieved", "verdict"], rows)
    if limits:
        lines += ["", "What limits the missed goals:", "", *limits]
    lines += ["", "## Training step time: pyro_snf vs normflows, same architecture and batch", "",
              "Interleaved: median ms per step over alternating rounds of 10 steps (loss of the protocol's "
              "last stage), the fair comparison on a shared machine (benchmarks/step_time.py). "
              "Training runs: mean ms per step of the training runs in the tables below, taken at "
              "different times.", ""]
    step_rows = []
    for key in energy_keys:
        ours = metrics[key].get(energy_methods.VARIANTS["snf"], {})
        theirs = metrics[key].get(normflows_methods.METHOD, {})
        cells = [key]
        for field_name in ("step_seconds_interleaved", "step_seconds"):
            a, b = ours.get(field_name, math.nan), theirs.get(field_name, math.nan)
            cells += [fmt(a * 1e3), fmt(b * 1e3), fmt(b / a if a else math.nan)]
        step_rows.append(cells)
    header = ["target", "pyro_snf (interleaved)", "normflows (interleaved)", "normflows / pyro_snf",
              "pyro_snf (training run)", "normflows (training run)", "normflows / pyro_snf"]
    lines += table(header, step_rows) + [""]
    lines += ["## Energy targets", ""] + energy_lines + ["## Pyro models", ""] + pyro_lines
    lines += ["## Column definitions", "", *DEFINITIONS]
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"suite": suite, "seed": seed, "minutes": minutes,
                                                  "metrics": metrics}, indent=1, default=float))
    log(f"wrote {report} and {out}/ in {minutes:.1f} min")
    return metrics


DEFINITIONS = [
    "- train s / sample s: wall time of training (NUTS: warmup) and of drawing the final samples "
    "(NUTS: the draws), on one torch thread.",
    "- target evals: energy (or energy + force) evaluations x particles, training and sampling, counted "
    "by wrapping the potential (Pyro models: model evaluations x particles, SVI, guide blocks, importance "
    "sampling and NUTS alike); probes for the training curves are excluded.",
    "- ESS frac.: Kish ESS / number of draws for importance samplers (pyro_snf.weights); for NUTS the "
    "minimum over coordinates of ArviZ's bulk ESS / draws (one chain: it cannot see modes it never visits).",
    "- ESS/s total: ESS / (train s + sample s); ESS/s sampling: ESS / sample s.",
    "- log Z error ± se: log-mean-exp of the weights minus the exact (energy targets) or reference "
    "(Pyro models, pyro_snf.examples.datasets.REFERENCE_LOG_EVIDENCE) value, with the delta-method "
    "standard error.",
    "- k-hat: PSIS Pareto k of the importance weights (< 0.7 for reliable estimates).",
    "- modes: modes holding >= 1% of their expected mass (weighted), where countable.",
]
