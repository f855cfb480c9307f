"""Rerun the double-well comparison of Wu, Köhler & Noé (2020) with the paper's protocol.

Models: RealNVP (3 blocks of 2 affine couplings, MLP 64-64); the same plus Metropolis blocks
(20 steps, step 0.25) at beta 0, 0.5, 1 (at the prior and between flow blocks); the same with
learnable Metropolis step sizes and intermediate beta. Training: 300 iterations of maximum
likelihood on exact samples, then 300 iterations of 50/50 ML + reverse KL, batch 128, Adam 5e-3.
Each model is trained ``--trainings`` times independently (seeds 0..N-1); each training is
evaluated on ``--num-sets`` x ``--set-size`` samples (free-energy profile along x1, 30 bins on
[-3, 3], bias and uncertainty as in the paper's analysis code: pyro_snf.diagnostics.free_energy,
evaluation in pyro_snf.examples.double_well). The table
reports mean ± std over trainings of sqrt(bias^2 + std^2), unweighted and reweighted.

    python -m benchmarks.double_well_paper --out benchmarks/results            # full (~30 min)
    python -m benchmarks.double_well_paper --trainings 2 --num-sets 4 --set-size 20000   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pyro_snf.architectures import paper_double_well_snf
from pyro_snf.examples.double_well import evaluate, train_paper_protocol
from pyro_snf.targets import DoubleWell

VARIANTS = {
    "rnvp": "RNVP",
    "snf": "RNVP + Metropolis",
    "snf_learnable": "RNVP + Metropolis, learnable step sizes and beta",
}
PAPER = {"rnvp": "1.15 ± 0.41", "snf": "0.63 ± 0.11", "snf_learnable": "0.42 ± 0.05"}
KEYS = ["free_energy_error_unweighted", "free_energy_error_reweighted", "log_Z_error", "ess_fraction",
        "left_mass_reweighted", "train_seconds", "samples_per_second"]


class ExactSampler:
    """Exact double-well draws with zero log-weights: the floor of the free-energy error metric."""

    def __init__(self, target: DoubleWell) -> None:
        self.target = target

    def sample_and_log_weight(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.target.sample(shape[0])
        return x, torch.full((shape[0],), self.target.log_Z)


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def markdown(results: dict[str, list[dict]], command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "",
        "| model | paper (released code), reweighted | ours, reweighted | ours, unweighted | "
        "log Z error | ESS fraction | left-well mass (exact 0.1557) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, runs in results.items():
        if key == "exact":
            continue
        col = {k: [r[k] for r in runs] for k in KEYS}
        lines.append(
            f"| {VARIANTS[key]} | {PAPER[key]} | {_mean_std(col['free_energy_error_reweighted'])} | "
            f"{_mean_std(col['free_energy_error_unweighted'])} | {_mean_std(col['log_Z_error'])} | "
            f"{_mean_std(col['ess_fraction'])} | {_mean_std(col['left_mass_reweighted'])} | "
            f"{statistics.mean(col['train_seconds']):.1f} |"
        )
    floor = results.get("exact")
    if floor:
        errors = [r["free_energy_error_reweighted"] for r in floor]
        lines.append(f"| exact samples (floor of the metric at this sample size) | | {_mean_std(errors)} "
                     "| | | | | |")
    lines.append("")
    lines.append("Free-energy errors in kT: sqrt(bias^2 + std^2), mean ± std over independent trainings.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainings", type=int, default=10)
    parser.add_argument("--num-sets", type=int, default=20)
    parser.add_argument("--set-size", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, nargs=2, default=(300, 300))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--layout", default="interleaved", choices=["interleaved", "after_flows"])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    target = DoubleWell()
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in range(args.trainings):
        torch.manual_seed(1000 + seed)
        data = target.sample(100_000)
        for variant in args.variants:
            torch.manual_seed(seed)
            snf = paper_double_well_snf(target, variant, layout=args.layout)
            start = time.perf_counter()
            train_paper_protocol(snf, data, iterations=tuple(args.iterations))
            train_seconds = time.perf_counter() - start
            row = {**evaluate(snf, target, args.num_sets, args.set_size), "train_seconds": train_seconds,
                   "seed": seed, "step_sizes": [float(b.step_size.detach()) for b in snf.blocks],
                   "betas": [float(torch.as_tensor(b.beta).detach()) for b in snf.blocks]}
            results[variant].append(row)
            print(f"seed {seed} {variant:>14}: F err rew {row['free_energy_error_reweighted']:.3f} "
                  f"unw {row['free_energy_error_unweighted']:.3f} logZ err {row['log_Z_error']:+.4f} "
                  f"ESS {row['ess_fraction']:.3f} train {train_seconds:.0f}s", flush=True)
    results["exact"] = []
    for seed in range(args.trainings):
        torch.manual_seed(2000 + seed)
        results["exact"].append(evaluate(ExactSampler(target), target, args.num_sets, args.set_size))
    command = "python -m benchmarks.double_well_paper " + " ".join(argv or [])
    table = markdown(results, command.strip())
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "double_well_paper" + ("" if args.layout == "interleaved" else f"_{args.layout}")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
