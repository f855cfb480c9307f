"""Throughput of each stochastic block: samples per second and energy evaluations per step.

For each block type, target (double well, 32-dim many-well) and batch size (1,000 and 100,000),
one call of a block with ``--num-steps`` steps is timed (best of ``--repeats``, under
``torch.no_grad()``, one thread) and the target's energy calls are counted, to check that
Langevin/MALA take exactly one energy+force evaluation per step and HMC one per leapfrog step.

    python -m benchmarks.block_throughput                  # full table
    python -m benchmarks.block_throughput --batch-sizes 1000 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import time

import torch

from pyro_snf.blocks import HMCBlock, LangevinBlock, MALABlock, MetropolisBlock, UnderdampedLangevinBlock
from pyro_snf.targets import DoubleWell, ManyWell


class CountingPotential:
    """Wraps a potential and counts its calls."""

    def __init__(self, potential) -> None:
        self.potential = potential
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.potential(x)


def blocks(num_steps: int, dim: int) -> dict:
    scale = 1.0 if dim == 2 else 0.5
    return {
        "Metropolis": MetropolisBlock(step_size=0.25 * scale, num_steps=num_steps),
        "Langevin (ULA)": LangevinBlock(step_size=0.01, num_steps=num_steps),
        "MALA": MALABlock(step_size=0.01, num_steps=num_steps),
        "HMC (5 leapfrog)": HMCBlock(step_size=0.05, num_steps=num_steps, num_leapfrog_steps=5),
        "Underdamped Langevin": UnderdampedLangevinBlock(step_size=0.05, num_steps=num_steps),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    print(f"| target | block | batch | samples/s ({args.num_steps} steps) | particle-steps/s | "
          "energy calls per step | acceptance |")
    print("|---|---|---|---|---|---|---|")
    for target in [DoubleWell(), ManyWell(32)]:
        for name, block in blocks(args.num_steps, target.dim).items():
            for batch in args.batch_sizes:
                x0 = target.sample(batch)
                best = float("inf")
                for _ in range(args.repeats):
                    potential = CountingPotential(target)
                    with torch.no_grad():
                        start = time.perf_counter()
                        block.forward_step(x0, potential)
                        best = min(best, time.perf_counter() - start)
                per_step = (potential.calls - 1) / args.num_steps
                row = {"target": f"{type(target).__name__}({target.dim})", "block": name, "batch": batch,
                       "samples_per_s": batch / best, "particle_steps_per_s": batch * args.num_steps / best,
                       "energy_calls_per_step": per_step,
                       "acceptance": float(block.last_info.acceptance_rate)}
                rows.append(row)
                print(f"| {row['target']} | {name} | {batch:,} | {row['samples_per_s']:,.0f} | "
                      f"{row['particle_steps_per_s']:,.0f} | {per_step:g} | {row['acceptance']:.2f} |",
                      flush=True)
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
