"""``python -m pyro_snf demo``: a plain flow vs an SNF on the paper's double well.

Trains RealNVP and RealNVP + Metropolis blocks with the paper's protocol
(:mod:`pyro_snf.examples.double_well`), prints a table of real measurements and writes two PNG
figures (samples; free-energy profiles against the exact one) into ``--out``. The figures are
:class:`matplotlib.figure.Figure` objects saved directly: no pyplot, no backend is selected.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from pyro_snf.architectures import paper_double_well_snf
from pyro_snf.examples.double_well import (
    EDGES,
    evaluate,
    exact_double_well_profile,
    free_energy_profile,
    train_paper_protocol,
)
from pyro_snf.targets import DoubleWell

MODELS = {"RealNVP": "rnvp", "SNF (RealNVP + Metropolis)": "snf"}


def _table(rows: dict[str, dict[str, float]]) -> str:
    head = (f"{'model':<28}{'F err unw':>10}{'F err rew':>10}{'logZ err':>16}{'ESS frac':>9}"
            f"{'left unw':>9}{'left rew':>9}{'train s':>8}{'sample s':>9}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        log_z = f"{r['log_Z_error']:+.3f}±{r['log_Z_stderr']:.3f}"
        lines.append(f"{name:<28}{r['free_energy_error_unweighted']:>10.2f}{r['free_energy_error_reweighted']:>10.2f}"
                     f"{log_z:>16}{r['ess_fraction']:>9.3f}{r['left_mass_unweighted']:>9.3f}"
                     f"{r['left_mass_reweighted']:>9.3f}{r['train_seconds']:>8.1f}{r['sampling_seconds']:>9.1f}")
    lines.append("F err: free-energy profile error along x1 in kT (sqrt(bias^2 + std^2), paper's definition);"
                 " "
                 f"exact left-well mass {next(iter(rows.values()))['left_mass_exact']:.4f}; "
                 "logZ err: estimate - exact, ± standard error")
    return "\n".join(lines)


def _figures(out: Path, samples: dict, target: DoubleWell) -> list[Path]:
    exact_x = target.sample(100_000)
    fig = Figure(figsize=(4 * (len(samples) + 1), 3.6))
    axes = fig.subplots(1, len(samples) + 1, sharey=True)
    for ax, (name, (x, _)) in zip(axes, [("exact", (exact_x, None)), *samples.items()]):
        ax.hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=100, range=[[-3, 3], [-4, 4]], cmap="viridis",
                  norm=LogNorm())
        ax.set_title(f"{name} (unweighted)", fontsize=10)
        ax.set_xlabel("$x_1$")
    axes[0].set_ylabel("$x_2$")
    fig.tight_layout()
    paths = [out / "double_well_samples.png"]
    fig.savefig(paths[0], dpi=110)

    centres = 0.5 * (EDGES[1:] + EDGES[:-1])
    exact = exact_double_well_profile(EDGES)
    fig = Figure(figsize=(4.5 * len(samples), 3.6))
    axes = fig.subplots(1, len(samples), sharey=True)
    for ax, (name, (x, log_w)) in zip(axes, samples.items()):
        ax.plot(centres, exact - exact.min(), "k-", lw=3, label="exact")
        for label, lw, style in [("unweighted", None, "r-o"), ("reweighted", log_w, "g-s")]:
            f = free_energy_profile(x, lw)
            ax.plot(centres, f - f[torch.isfinite(f)].min(), style, ms=3, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("$x_1$")
        ax.set_ylim(-1, 14)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("free energy (kT)")
    fig.tight_layout()
    paths.append(out / "double_well_free_energy.png")
    fig.savefig(paths[1], dpi=110)
    return paths


def run_demo(out: str | Path = "demo_out", quick: bool = False, seed: int = 0) -> dict[str, dict[str, float]]:
    """Train, evaluate, print the table and write the figures; return the table rows."""
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = DoubleWell()
    data = target.sample(100_000)
    iterations = (100, 100) if quick else (300, 300)
    num_sets, set_size = (5, 20_000) if quick else (10, 100_000)
    print(f"double well, paper protocol: {iterations[0]} ML + {iterations[1]} ML/KL iterations, batch 128; "
          f"evaluation on {num_sets} x {set_size:,} samples", flush=True)
    rows, samples = {}, {}
    for name, variant in MODELS.items():
        snf = paper_double_well_snf(target, variant)
        start = time.perf_counter()
        train_paper_protocol(snf, data, iterations=iterations)
        train_seconds = time.perf_counter() - start
        rows[name] = {**evaluate(snf, target, num_sets, set_size), "train_seconds": train_seconds}
        samples[name] = snf.sample_and_log_weight((set_size,))
        print(f"  {name}: trained in {train_seconds:.1f} s", flush=True)
    print(_table(rows))
    for path in _figures(out, samples, target):
        print(f"wrote {path}")
    return rows
