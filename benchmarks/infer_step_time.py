"""Time per SVI step: AutoSNF vs AutoIAFNormal, 8 vectorised particles, one thread.

Models: eight schools (non-centred, D = 10) and Bayesian logistic regression on German credit
(standardised features, ddof 0, intercept prepended, w ~ N(0, I), D = 25).
Reports the median over ``--steps`` timed steps after ``--warmup`` steps.

    python -m benchmarks.infer_step_time
    python -m benchmarks.infer_step_time --steps 20 --warmup 3      # quick
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal

from pyro_snf.infer import AutoSNF

DATA = Path("/work/shared/data")
SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y: torch.Tensor, sigma: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = mu + tau * theta_tilde
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def german_credit() -> tuple[torch.Tensor, torch.Tensor]:
    with open(DATA / "logistic" / "german_numeric.csv") as f:
        rows = list(csv.reader(f))[1:]
    data = torch.tensor([[float(v) for v in r] for r in rows])
    x, y = data[:, :-1], data[:, -1]
    sd = x.std(0, unbiased=False)
    x = (x - x.mean(0)) / torch.where(sd > 0, sd, torch.ones_like(sd))
    return torch.cat([torch.ones(len(x), 1), x], 1), y


def logistic(x: torch.Tensor, y: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=(x * w).sum(-1)), obs=y)


def time_steps(model, guide, args: tuple, steps: int, warmup: int) -> float:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
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
    problems = {
        "eight schools (D=10)": (eight_schools, (SCHOOLS_Y, SCHOOLS_SIGMA)),
        "german credit (D=25)": (logistic, german_credit()),
    }
    guides = {
        "AutoIAFNormal": lambda m: AutoIAFNormal(m),
        "AutoSNF (default)": lambda m: AutoSNF(m),
        "AutoSNF (detach_forces=True)": lambda m: AutoSNF(m, detach_forces=True),
        "AutoSNF (flow='none')": lambda m: AutoSNF(m, flow="none"),
        "AutoSNF (num_blocks=0: flow only)": lambda m: AutoSNF(m, num_blocks=0),
    }
    print(f"median time per SVI step, Trace_ELBO(8 particles, vectorised), {opts.steps} steps, 1 thread")
    for pname, (model, args) in problems.items():
        for gname, make in guides.items():
            ms = 1e3 * time_steps(model, make(model), args, opts.steps, opts.warmup)
            print(f"  {pname:22s} {gname:34s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
