"""Rerun the alanine-dipeptide experiment of Wu, Köhler & Noé (2020): RNVP vs SNF in internal coordinates.

Data: the shipped MD (``pyro_snf/molecules/data``: 40 ns training set at 1000 K, 10^4 frames 4 ps apart;
an independent 10 ns reference). Target: ``TorsionBox(InternalEnergy(linlogcut(u, 500, 1e4),
rigid_body=True))`` in the paper's 60 internal coordinates (``pyro_snf.molecules.experiment``). Models:
RNVP, 5 stages of 2 affine couplings (MLP 3 x 128, ReLU); SNF = the same stages with a stochastic block
after each, annealed at lambda_i = i/4 (random-walk Metropolis, 20 steps of 0.1, as the paper; or MALA,
5 steps of 0.01); the circular variants put the torsions that reach the seam on the circle
(``CircularCoupling``, not in the paper); ``snf_mc_pulled_circular`` runs the same Metropolis blocks
before each circular stage on the target pulled back through the later stages
(``PulledBackBlock(..., jacobian=True)``). Training: maximum likelihood, Adam 1e-3, batch 128, at most
1,000 iterations (the paper's). By default the training frames are augmented by Metropolis chains on the
target (``pyro_snf.augment.mcmc_augment``; ``--augment`` snapshots per frame, ``--augment-steps`` steps
of 0.1 apart; every snapshot of a chain started from a Boltzmann sample is again one), the last 20% of
the frames are held out (not augmented), and every flow's training stops early on their loss
(``--validation``; ML on the 8,000 frames alone overfits within a few hundred iterations, and the
weights of an overfitted flow degrade); each SNF starts from its flow's trained stages with the blocks
inserted. ``--finetune N`` then trains the SNFs in ``--finetune-variants`` through their blocks by ML for
up to N iterations, early-stopped the same way (one iteration costs about 1.2 s, 20-40x a flow
iteration; off by default). ``--validation 0 --augment 0`` is the paper's protocol for the flows, with
the blocks inserted untrained.
Metrics (``evaluate_ala2``): the paper's torsion KL (unweighted, as the paper; against the training set,
their definition, and against the 10 ns reference) and a normalised KL, (phi, psi) free-energy RMSE (20 x
20 bins, bins with >= 1% reference population), phi > 0 population, Kish ESS, PSIS k-hat, log Z; beside
the paper's KLs, the score of an exact sampler (the 10 ns reference against the training set).

    python -m benchmarks.ala2                          # 3 seeds, paper sizes (about 11 min on one core)
    python -m benchmarks.ala2 --validation 0 --augment 0    # the paper's protocol (about 10 min)
    python -m benchmarks.ala2 --smoke                  # CI size (about 15 s)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pyro_snf.augment import mcmc_augment
from pyro_snf.blocks import MetropolisBlock
from pyro_snf.molecules import OpenMMEnergy, alanine_dipeptide
from pyro_snf.molecules.ala2_data import (
    ALA2_TORSION_NAMES,
    PAPER_TORSION_NAMES,
    ala2_torsions,
    load_ala2_reference,
    load_ala2_training,
)
from pyro_snf.molecules.experiment import (
    ala2_target,
    copy_flow_parameters,
    evaluate_ala2,
    paper_ala2_model,
    sample_with_weights,
    wide_torsions,
)
from pyro_snf.molecules.metrics import block_standard_error, torsion_kl
from pyro_snf.train import fit

LABELS = {"rnvp": "RNVP", "snf_mc": "SNF, Metropolis (20 x 0.1)", "snf_mala": "SNF, MALA",
          "circular": "circular flow", "snf_mc_circular": "circular SNF, Metropolis",
          "snf_mala_circular": "circular SNF, MALA",
          "snf_mc_pulled_circular": "circular SNF, Metropolis on the pulled-back target"}
SHORT = {**LABELS, "snf_mc_pulled_circular": "pulled-back circular SNF"}  # figure titles
FLOWS = ("rnvp", "circular")  # trained by ML; every SNF reuses the stages of its flow
PAPER_KL = {"rnvp": None, "snf_mc": {"phi_nb": 0.41, "gamma1": 0.20, "psi_nb": 0.16, "gamma2": 0.08,
                                     "gamma3": 0.10}}
SMOKE = {"seeds": 1, "iterations": 10, "batch": 32, "samples": 400, "hidden": 16, "mc_steps": 2,
         "mala_steps": 1, "finetune": 2, "augment": 1, "augment_steps": 2}
AUGMENT_SEED = 10_000  # the augmentation chains' seed (one pool per run, shared by the seeds)


def _ms(values: list[float]) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def _flow_of(variant: str) -> str:
    return "circular" if variant.endswith("circular") else "rnvp"


def reference_summary(reference: dict, train_torsions: np.ndarray) -> dict:
    """The MD floors and phi > 0 populations. ``kl_training_vs_reference``: KL(reference || training set),
    what the training set itself scores in the tables against the reference. ``kl_reference_vs_training``:
    KL(training set || reference), what an exact sampler of the Boltzmann density (the independent
    reference MD standing in for one) scores in the paper's comparison against the training set."""
    ref = reference["torsions"].astype(np.float64)
    phi = ALA2_TORSION_NAMES.index("phi")
    return {"kl_training_vs_reference": {n: torsion_kl(ref[:, i], train_torsions[:, i])
                                         for i, n in enumerate(ALA2_TORSION_NAMES)},
            "kl_reference_vs_training": {n: torsion_kl(train_torsions[:, i], ref[:, i])
                                         for i, n in enumerate(ALA2_TORSION_NAMES)},
            "phi_positive_reference": dict(zip(("value", "se"), block_standard_error(ref[:, phi] > 0))),
            "phi_positive_training": dict(zip(("value", "se"),
                                              block_standard_error(train_torsions[:, phi] > 0)))}


def figure(path: Path, reference: dict, samples: dict, energy_ref: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    ip, iq = ALA2_TORSION_NAMES.index("phi"), ALA2_TORSION_NAMES.index("psi")
    preferred = [k for k in ("snf_mc_pulled_circular", "snf_mc_circular", "snf_mc") if k in samples]
    snf = preferred[0] if preferred else list(samples)[-1]
    panels = [("MD reference (10 ns)", reference["torsions"], None)]
    for key in dict.fromkeys(k for k in ("rnvp", _flow_of(snf), snf) if k in samples):
        panels.append((f"{SHORT[key]}, unweighted", samples[key]["torsions"], None))
    lw = samples[snf]["log_weights"]
    panels.append((f"{SHORT[snf]}, reweighted", samples[snf]["torsions"], np.exp(lw - lw.max())))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.4 * (len(panels) + 1), 4.2))
    edges = np.linspace(-np.pi, np.pi, 61)
    for ax, (title, tor, w) in zip(axes, panels):  # colour: density, 4 decades below the top bin
        h, _, _ = np.histogram2d(tor[:, ip], tor[:, iq], bins=[edges, edges], weights=w, density=True)
        ax.pcolormesh(edges, edges, np.where(h > 0, h, np.nan).T, norm=LogNorm(h.max() * 1e-4, h.max()))
        ax.set(title=title, xlabel=r"$\phi$", ylabel=r"$\psi$")
    e_edges = np.linspace(np.percentile(energy_ref, 0.1), np.percentile(energy_ref, 99.9), 60)
    width = e_edges[1] - e_edges[0]
    colors = {k: f"C{i}" for i, k in enumerate(LABELS)}
    curves = [("MD", energy_ref, "k")] + [(LABELS[k], samples[k]["energy"], colors[k]) for k in samples]
    for label, u, color in curves:  # density relative to all samples (those above the range are missing)
        axes[-1].hist(u, e_edges, weights=np.full(len(u), 1.0 / (len(u) * width)), histtype="step",
                     color=color, label=label)
    axes[-1].set(title="energy u(x) (kT, 1000 K)", xlabel="u", ylabel="density")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(results: dict, command: str) -> str:
    runs, ref = results["runs"], results["reference"]
    names = list(PAPER_TORSION_NAMES) + ["phi", "psi"]
    lines = [f"Command: `{command}`  ", f"Setup: {json.dumps(results['config'])}  ",
             f"Load average before/after: {results['load_before']} / {results['load_after']}  "]
    aug = results.get("augmentation")
    lines += [f"Training frames augmented by Metropolis chains on the target: a pool of {aug['pool']} in "
              f"{aug['seconds']:.0f} s, acceptance {aug['acceptance_last_snapshot']:.2f} (last snapshot)"
              if aug else "Training frames not augmented", "", ""]
    head = ["| model | " + " | ".join(names) + " | train s | sample s |", "|---" * (len(names) + 3) + "|"]
    floor, exact = ref["kl_training_vs_reference"], ref["kl_reference_vs_training"]
    titles = {"kl_vs_training": "Paper's torsion KL, their definition (unweighted samples vs the training "
                                "set, as their notebook)",
              "kl": "Paper's torsion KL, unweighted samples vs the independent 10 ns MD reference",
              "kl_reweighted": "Paper's torsion KL, reweighted samples vs the 10 ns MD reference"}
    for kl_key, title in titles.items():
        lines += [f"{title}, mean ± std over seeds:", "", *head]
        for key, rows in runs.items():
            cells = [_ms([r[kl_key][n]["paper"] for r in rows]) for n in names]
            seconds = " | ".join(_ms([r[k] for r in rows]) for k in ("train_seconds", "sample_seconds"))
            lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + f" | {seconds} |")
        if kl_key == "kl_vs_training":
            lines.append("| paper, SNF (their notebook) | 0.41 | 0.20 | 0.16 | 0.08 | 0.10 | | | | |")
            lines.append("| exact sampler: the 10 ns MD reference vs the training set | " +
                         " | ".join(f"{exact[n]['paper']:.2f}" for n in names) + " | | |")
        else:
            lines.append("| MD floor: the training set vs the reference | " +
                         " | ".join(f"{floor[n]['paper']:.2f}" for n in names) + " | | |")
        lines.append("")
    lines += ["Per seed (their definition; paper KL phi_nb gamma1 psi_nb gamma2 gamma3 | normalised KL, same "
              "order):", ""]
    for key, rows in runs.items():
        for r in rows:
            paper = " ".join(f"{r['kl_vs_training'][n]['paper']:.3f}" for n in PAPER_TORSION_NAMES)
            norm = " ".join(f"{r['kl_vs_training'][n]['normalised']:.4f}" for n in PAPER_TORSION_NAMES)
            lines.append(f"- {LABELS[key]}, seed {r['seed']}: {paper} | {norm}")
    lines += ["", "| model | FES RMSE unweighted (kT) | FES RMSE reweighted (kT) | empty bins rew. | "
              "phi>0 unweighted | phi>0 reweighted | ESS (Kish) | PSIS k-hat | log Z ± SE | zero weights |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key, rows in runs.items():
        for r in rows:
            lines.append(
                f"| {LABELS[key]} s{r['seed']} | {r['fes']['rmse']:.2f} | "
                f"{r['fes_reweighted']['rmse']:.2f} | "
                f"{r['fes_reweighted']['num_empty']}/{r['fes_reweighted']['num_bins']} | "
                f"{r['phi_positive']['value']:.3f} ± {r['phi_positive']['se']:.3f} | "
                f"{r['phi_positive_reweighted']['value']:.3f} ± {r['phi_positive_reweighted']['se']:.3f} | "
                f"{r['weights']['ess']:.1f} | {r['weights']['khat']:.2f} | "
                f"{r['weights']['log_Z']:.2f} ± {r['weights']['log_Z_se']:.2f} | "
                f"{r['fraction_zero_weight']:.3f} |")
    stops = [f"{LABELS[k]} {[r['best_iteration'] for r in rows]}" for k, rows in runs.items()
             if rows and rows[0].get("best_iteration") is not None]
    if stops:
        lines += ["", "Early stopping (held-out ML loss every 50 iterations for flows, 25 for SNFs trained "
                  "through their blocks), restored iteration per seed: " + "; ".join(stops) + "."]
    pr, pt = ref["phi_positive_reference"], ref["phi_positive_training"]
    lines += ["", "PSIS k-hat > 0.7: the weights' variance is effectively infinite; the reweighted columns "
              "(and their SEs) are then unreliable, whatever their values.", "",
              f"MD phi > 0: reference {pr['value']:.3f} ± {pr['se']:.3f}, training set "
              f"{pt['value']:.3f} ± {pt['se']:.3f} (block standard errors, 10 blocks)."]
    return "\n".join(lines) + "\n"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--mc-steps", type=int, default=20)
    parser.add_argument("--mala-steps", type=int, default=5)
    parser.add_argument("--augment", type=int, default=8,
                        help="snapshots per training frame of a Metropolis chain on the target "
                             "(0: the frames only)")
    parser.add_argument("--augment-steps", type=int, default=50,
                        help="Metropolis steps (of 0.1) between two snapshots")
    parser.add_argument("--finetune", type=int, default=0,
                        help="ML iterations of the whole SNF (through its blocks) after inserting them")
    parser.add_argument("--finetune-variants", nargs="+", default=["snf_mc_circular"],
                        help="the SNF variants that --finetune trains")
    parser.add_argument("--validation", type=float, default=0.2,
                        help="fraction of the training frames (the last ones, a contiguous stretch of MD) "
                             "held out for early stopping of the flows' ML training; 0: the paper's "
                             "protocol (all frames, all iterations)")
    parser.add_argument("--patience", type=int, default=3,
                        help="early stopping: evaluations (every 50 iterations) without improvement")
    parser.add_argument("--variants", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--periodic", choices=("wide", "all"), default="wide",
                        help="torsions the circular variants treat as angles: those of the training set "
                             "that reach |z| > 2 rad (default) or all 17")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.set_num_threads(1)
    start_all, load_before = time.perf_counter(), _load()
    system, _, _ = alanine_dipeptide()
    frames = load_ala2_training()
    reference = load_ala2_reference()
    target, z_data = ala2_target(system, frames)
    train_torsions = ala2_torsions(frames)
    cartesian_energy = OpenMMEnergy(system, temperature=1000.0)
    config = {k: getattr(args, k) for k in ("seeds", "iterations", "batch", "samples", "hidden", "mc_steps",
                                            "mala_steps", "augment", "augment_steps", "finetune",
                                            "finetune_variants", "periodic", "validation", "patience")}
    wrong = [v for v in args.finetune_variants if v not in LABELS or v in FLOWS]
    if wrong:
        snfs = [k for k in LABELS if k not in FLOWS]
        parser.error(f"--finetune-variants takes SNF variants ({snfs}), got {wrong}")
    if not 0 <= args.validation < 1:
        parser.error(f"--validation must be in [0, 1), got {args.validation}")
    if args.augment < 0 or args.augment_steps < 1:
        parser.error(f"--augment must be >= 0 and --augment-steps >= 1, got {args.augment}, "
                     f"{args.augment_steps}")
    n_fit = len(z_data) - int(round(args.validation * len(z_data)))
    z_fit, z_val = z_data[:n_fit], (z_data[n_fit:] if n_fit < len(z_data) else None)
    augmentation = None
    if args.augment:  # held-out frames stay as they are
        torch.manual_seed(AUGMENT_SEED)
        tic = time.perf_counter()
        block = MetropolisBlock(step_size=0.1, num_steps=args.augment_steps)
        z_fit = mcmc_augment(z_fit, target, block, num_snapshots=args.augment)
        augmentation = {"pool": len(z_fit), "seconds": time.perf_counter() - tic,
                        "acceptance_last_snapshot": float(block.last_info.acceptance_rate)}
        print(f"augmented {n_fit} frames to {len(z_fit)} in {augmentation['seconds']:.0f} s", flush=True)
    periodic = wide_torsions(target, z_data) if args.periodic == "wide" else None
    # the SNFs reuse their flow's trained stages: train each needed flow first
    needed = {_flow_of(v) for v in args.variants}
    variants = [f for f in FLOWS if f in needed] + [v for v in args.variants if v not in FLOWS]
    results: dict = {"config": config, "runs": {k: [] for k in variants}, "augmentation": augmentation,
                     "reference": reference_summary(reference, train_torsions)}
    kept: dict = {}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        models = {}
        for key in variants:
            steps = args.mala_steps if "mala" in key else args.mc_steps if "mc" in key else 0
            model = paper_ala2_model(target, key, hidden_dims=(args.hidden,) * 3, num_steps=max(steps, 1),
                                     periodic=periodic)
            tic = time.perf_counter()
            best_iteration = None
            if key in FLOWS:
                history = fit(model, num_iterations=args.iterations, batch_size=args.batch, data=z_fit,
                              kl_weight=0.0, ml_weight=1.0, lr=1e-3, progress=False, validation_data=z_val,
                              validate_every=50, patience=args.patience)
                best_iteration = history.best_iteration
            else:
                copy_flow_parameters(models[_flow_of(key)], model)
                if args.finetune and key in args.finetune_variants:
                    history = fit(model, num_iterations=args.finetune, batch_size=args.batch, data=z_fit,
                                  kl_weight=0.0, ml_weight=1.0, lr=1e-3, progress=False,
                                  validation_data=z_val, validate_every=25, patience=args.patience)
                    best_iteration = history.best_iteration
            train_seconds = time.perf_counter() - tic
            models[key] = model
            tic = time.perf_counter()
            samples = sample_with_weights(model, args.samples)
            sample_seconds = time.perf_counter() - tic
            with torch.no_grad():
                samples["energy"] = cartesian_energy(torch.as_tensor(samples["x"])).numpy()
            row = {**evaluate_ala2(samples, reference, train_torsions), "seed": seed,
                   "train_seconds": train_seconds, "sample_seconds": sample_seconds,
                   "best_iteration": best_iteration}
            results["runs"][key].append(row)
            if seed == 0:
                kept[key] = {"torsions": ala2_torsions(samples["x"]), "log_weights": samples["log_weights"],
                             "energy": samples["energy"]}
            kl = " ".join(f"{row['kl_vs_training'][n]['paper']:.2f}" for n in PAPER_TORSION_NAMES)
            print(f"seed {seed} {key:>8}: KL {kl} | FES rew {row['fes_reweighted']['rmse']:.2f} "
                  f"ESS {row['weights']['ess']:.1f} k-hat {row['weights']['khat']:.2f} | "
                  f"train {train_seconds:.0f}s sample {sample_seconds:.0f}s",
                  flush=True)
    results["total_seconds"] = time.perf_counter() - start_all
    results["load_before"], results["load_after"] = load_before, _load()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ala2"
    if args.smoke:
        stem = "ala2_smoke"
    elif args.validation == 0 and args.finetune == 0 and args.augment == 0:
        stem = "ala2_paper_protocol"
    else:
        for key in ("validation", "finetune", "augment"):
            value = getattr(args, key)
            stem += f"_{key}{value:g}" if value != parser.get_default(key) else ""
    figure(out / f"{stem}_ramachandran.png", reference, kept, reference["energy"].astype(np.float64))
    command = "python -m benchmarks.ala2 " + " ".join(argv or [])
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    table = markdown(results, command.strip()) + f"\nTotal wall time {results['total_seconds']:.0f} s.\n"
    (out / f"{stem}.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
