"""Time per SVI step: AutoSNF configurations vs AutoIAFNormal and AutoMultivariateNormal, 8
vectorised particles, one thread.

Models and data as shipped (:mod:`pyro_snf.examples.models`, :mod:`pyro_snf.examples.datasets`):
eight schools (non-centred, D = 10) and Bayesian logistic regression on German credit (standardised
features, intercept prepended, w ~ N(0, I), D = 25).
Reports the median over ``--steps`` timed steps after ``--warmup`` steps.

    python -m benchmarks.infer_step_time
    python -m benchmarks.infer_step_time --steps 20 --warmup 3      # quick
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal

from pyro_snf.examples.datasets import eight_schools, load_logistic
from pyro_snf.examples.models import eight_schools_noncentered, logistic_regression
from pyro_snf.infer import AutoSNF


def time_steps(model, guide, args: tuple, steps: int, warmup: int, stage_one: bool = False) -> float:
    """Median seconds per SVI step; ``stage_one``: inside ``guide.without_blocks()``, else AutoSNF's
    steps run inside ``guide.adapting()`` (as in training)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    if isinstance(guide, AutoSNF):
        stage = guide.without_blocks() if stage_one else guide.adapting()
    else:
        stage = contextlib.nullcontext()
    with stage:
        for _ in range(warmup):
            svi.step(*args)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            svi.step(*args)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    schools = eight_schools()
    problems = {
        "eight schools (D=10)": (eight_schools_noncentered, (schools["J"], schools["sigma"], schools["y"])),
        "german credit (D=25)": (logistic_regression, load_logistic("german")),
    }
    guides = {  # name -> (factory, stage one: the blocks switched off)
        "AutoIAFNormal": (AutoIAFNormal, False),
        "AutoMultivariateNormal": (AutoMultivariateNormal, False),
        "AutoSNF (default: 2 MALA blocks x 2 steps)": (AutoSNF, False),
        "AutoSNF (default, within without_blocks())": (AutoSNF, True),
        "AutoSNF (detach_forces=True)": (lambda m: AutoSNF(m, block_kwargs={"detach_forces": True}),
                                         False),
        "AutoSNF (8 MALA blocks x 1 step)": (
            lambda m: AutoSNF(m, num_blocks=8, block_kwargs={"num_steps": 1}), False),
        "AutoSNF (flow='coupling')": (lambda m: AutoSNF(m, flow="coupling"), False),
    }
    print(f"median time per SVI step, Trace_ELBO(8 particles, vectorised), {opts.steps} steps, 1 thread")
    for pname, (model, args) in problems.items():
        for gname, (make, stage_one) in guides.items():
            ms = 1e3 * time_steps(model, make(model), args, opts.steps, opts.warmup, stage_one)
            print(f"  {pname:22s} {gname:44s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
