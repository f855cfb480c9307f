"""The issue's goals, checked against a suite's metrics (achieved value next to each goal).

A goal is never tuned for: configurations are fixed before the run, and a missed goal is reported
as missed together with what limits it (see the notes of the methods in RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Metrics = dict[str, dict[str, dict[str, float]]]  # target -> method -> metric -> value
SNF = "pyro_snf SNF"
FLOW = "same flow, no blocks"
NORMFLOWS = "normflows SNF (same arch.)"
AUTOSNF = "AutoSNF"
IAF = "Pyro AutoIAFNormal"


@dataclass(frozen=True)
class Goal:
    """``check(metrics) -> (achieved text, met or None when it cannot be evaluated)``."""

    target: str
    text: str
    check: Callable[[Metrics], tuple[str, bool | None]]
    #: what limits it, from measurements outside this run; printed when the goal is missed
    limits: str = ""


LIMITS = {
    "free_energy": "one training per method here; over 10 trainings (benchmarks/double_well_paper.py) "
                   "the SNF scores 0.370 +- 0.043 kT and with learnable steps and beta 0.322 +- 0.044 kT, "
                   "against a floor of 0.221 +- 0.019 kT that exact samples score at 100,000 samples per "
                   "set: the barrier bins hold a handful of samples, so the variance term dominates.",
    "gmm_ess": "the path weight carries the randomness of 50 Metropolis steps; the flow alone trained the "
               "same way has a similar ESS, and ML on exact samples (tutorial 02) gave SNF 7% and flow 21%: "
               "the coupling flow's own density mismatch between 40 modes limits it, not the blocks.",
    "iaf_ess_rate": "ESS/s is ESS / (training + sampling seconds) at the same SVI budget (800 steps). "
                    "AutoSNF trains stage-wise: 760 steps cost what an AutoMultivariateNormal step costs, "
                    "40 steps through 8 MALA blocks add about 2 s, and each draw costs 9 batched model "
                    "gradient evaluations. Where the IAF guide already has an ESS fraction of 0.3-0.55 at "
                    "the training cost of a Gaussian guide (german, eight schools), twice its ESS/s needs "
                    "an ESS fraction of 0.6-1.1 at no extra cost: even ESS fraction 1 with the IAF's own "
                    "training time and free sampling would give eight schools about 1.8x. Where the IAF's "
                    "weights degenerate (ionosphere, sonar: ESS < 1%), the blocks pay many times over.",
    "normflows_ess_rate": "normflows' SNF of the same architecture reaches about the same ESS per sample "
                          "(within 20%) with the same training budget and a similar wall time; twice its "
                          "ESS/s would need a better model, not a faster engine.",
    "step_time": "both libraries take 20-30 ms per step at this size (batch 256, d = 8), dominated by the "
                 "per-layer autograd overhead they share; the ratio has come out on either side of 1 "
                 "between runs on this shared machine.",
}


def _get(metrics: Metrics, target: str, method: str, key: str) -> float:
    return metrics.get(target, {}).get(method, {}).get(key, math.nan)


def _at_most(target: str, method: str, key: str, bound: float, absolute: bool = True,
             strict: bool = False) -> Callable:
    def check(m: Metrics) -> tuple[str, bool | None]:
        v = _get(m, target, method, key)
        v = abs(v) if absolute else v
        return (f"{v:.3f}", None) if math.isnan(v) else (f"{v:.3f}", v < bound if strict else v <= bound)
    return check


def _at_least(target: str, method: str, key: str, bound: float) -> Callable:
    def check(m: Metrics) -> tuple[str, bool | None]:
        v = _get(m, target, method, key)
        return (f"{v:.3f}", None) if math.isnan(v) else (f"{v:.3f}", v >= bound)
    return check


def _modes(target: str, method: str, want_all: bool) -> Callable:
    def check(m: Metrics) -> tuple[str, bool | None]:
        got, total = _get(m, target, method, "modes"), _get(m, target, method, "modes_total")
        if math.isnan(got):
            return "-", None
        return f"{int(got)}/{int(total)}", (got == total) if want_all else (got < total)
    return check


def _ratio(target: str, ours: str, theirs: str, key: str, bound: float,
           lower_is_better: bool = False) -> Callable:
    def check(m: Metrics) -> tuple[str, bool | None]:
        a, b = _get(m, target, ours, key), _get(m, target, theirs, key)
        if math.isnan(a) or math.isnan(b) or b == 0:
            return "not run", None
        r = b / a if lower_is_better else a / b
        return f"{r:.2f}x ({a:.3g} vs {b:.3g})", r >= bound
    return check


def _within(target: str, method: str, seconds: float, inner: Callable) -> Callable:
    def check(m: Metrics) -> tuple[str, bool | None]:
        text, ok = inner(m)
        t = _get(m, target, method, "total_seconds")
        return f"{text} in {t:.0f} s", None if ok is None else (ok and t <= seconds)
    return check


def goals(energy_targets: list[str], pyro_targets: list[str]) -> list[Goal]:
    """The goals that apply to the targets of this run."""
    out: list[Goal] = []
    dw, gmm, mw = "double_well", "gmm40", "many_well_8"
    if dw in energy_targets:
        out += [Goal(dw, "SNF reweighted free-energy error <= 0.30 kT",
                     _at_most(dw, SNF, "target_metric", 0.30), LIMITS["free_energy"]),
                Goal(dw, "SNF |log Z error| <= 0.02", _at_most(dw, SNF, "log_Z_error", 0.02))]
    if gmm in energy_targets:
        out += [Goal(gmm, "SNF covers 40/40 modes", _modes(gmm, SNF, True)),
                Goal(gmm, "SNF |log Z error| <= 0.05", _at_most(gmm, SNF, "log_Z_error", 0.05)),
                Goal(gmm, "SNF ESS fraction >= 0.3", _at_least(gmm, SNF, "ess_fraction", 0.3),
                     LIMITS["gmm_ess"]),
                Goal(gmm, "the same flow without blocks collapses (< 40 modes)", _modes(gmm, FLOW, False))]
    if mw in energy_targets:
        out.append(Goal(mw, "SNF |log Z error| <= 0.05 within 10 minutes",
                        _within(mw, SNF, 600, _at_most(mw, SNF, "log_Z_error", 0.05))))
    for key in energy_targets:
        if key.startswith("funnel"):
            out.append(Goal(key, "SNF |log Z error| <= 0.05", _at_most(key, SNF, "log_Z_error", 0.05)))
    bounds = {"ionosphere": 0.1, "german": 0.1, "sonar": 0.3}
    for key in pyro_targets:
        if key in bounds:
            out += [Goal(key, f"AutoSNF |log Z error| <= {bounds[key]}",
                         _at_most(key, AUTOSNF, "log_Z_error", bounds[key])),
                    Goal(key, "AutoSNF k-hat < 0.7",
                         _at_most(key, AUTOSNF, "khat", 0.7, absolute=False, strict=True))]
    for key in pyro_targets:
        out.append(Goal(key, "AutoSNF ESS/s >= 2x Pyro AutoIAFNormal",
                        _ratio(key, AUTOSNF, IAF, "ess_per_s", 2.0), LIMITS["iaf_ess_rate"]))
    for key in energy_targets:
        out.append(Goal(key, "SNF ESS/s >= 2x normflows SNF", _ratio(key, SNF, NORMFLOWS, "ess_per_s", 2.0),
                        LIMITS["normflows_ess_rate"]))
        out.append(Goal(key, "SNF training step time <= normflows (same architecture)",
                        _ratio(key, SNF, NORMFLOWS, "step_seconds_interleaved", 1.0, lower_is_better=True),
                        LIMITS["step_time"]))
    return out


def goal_rows(metrics: Metrics, energy_targets: list[str],
              pyro_targets: list[str]) -> tuple[list[list[str]], list[str]]:
    """``[target, goal, achieved, verdict]`` rows, and one line per missed goal on what limits it."""
    rows, limits = [], []
    for goal in goals(energy_targets, pyro_targets):
        achieved, ok = goal.check(metrics)
        verdict = "n/a (not run)" if ok is None else ("met" if ok else "**missed**")
        rows.append([goal.target, goal.text, achieved, verdict])
        if ok is False:
            limits.append(f"- {goal.target}, {goal.text} ({achieved}): "
                          + (goal.limits or "not analysed yet."))
    return rows, limits
