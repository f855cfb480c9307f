"""One process vs several: sharded importance sampling and data-parallel training (pyro_snf.distributed).

1. Importance sampling of the german credit logistic regression (1000 rows, D 25) with an ``AutoSNF``
   guide (2 MALA blocks, fitted here once, ``--svi-steps``, then loaded by every rank from Pyro's param
   store): ``--draws`` draws in total, split over 1 and over N processes (``launch_local``: torchrun's
   environment, gloo, one intra-op thread per process). Reported: samples/s (pooling and k-hat on the
   pooled weights included), speedup (wall time; and in CPU seconds of the slowest rank, which other load
   on the machine does not inflate), log Z +/- SE, ESS, k-hat, the SE one would reach in
   ``--wall-time`` seconds (``se * sqrt(t / T)``: SE scales as 1/sqrt(draws)), peak RSS per process.
2. Data-parallel training vs its single-process reference (same global batch, same per-shard seeds,
   :class:`~pyro_snf.distributed.EmulatedShards`): ``data_parallel_fit`` on a double-well SNF and
   ``DataParallelSVI`` with AutoSNF on german credit, the first ``--train-steps`` losses compared.

    python -m benchmarks.distributed                                   # full: 10^6 draws, 1 vs 2 processes
    python -m benchmarks.distributed --draws 20000 --svi-steps 50      # smoke, ~1 minute
    torchrun --nproc_per_node 2 -m benchmarks.distributed --worker is OUT.json ...   # one run by hand
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pyro_snf.distributed import (
    DataParallelSVI,
    EmulatedShards,
    ProcessGroupShards,
    data_parallel_fit,
    init_from_env,
    launch_local,
    sharded_importance_sample,
)
from pyro_snf.examples.datasets import load_logistic
from pyro_snf.examples.models import logistic_regression
from pyro_snf.infer import AutoSNF


def make_guide() -> AutoSNF:
    """The suite's AutoSNF recipe (benchmarks.pyro_models) with 2 MALA blocks instead of 8."""
    return AutoSNF(logistic_regression, flow="none", block="mala", num_blocks=2,
                   block_kwargs={"num_steps": 1, "step_size": 0.5}, init_scale=0.1)


def fit_guide(path: Path, steps: int) -> None:
    """Fit the guide stage-wise as the suite does (all but the last 40 steps with the blocks off, those 40
    inside ``adapting()``; ClippedAdam 0.05 decaying to 0.005, 16 particles) and save Pyro's param store."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    X, y = load_logistic("german")
    guide = make_guide()
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 10.0, "lrd": 0.1 ** (1.0 / steps)})
    svi = pyro.infer.SVI(logistic_regression, guide, optim,
                         pyro.infer.Trace_ELBO(16, vectorize_particles=True, max_plate_nesting=1))
    for step in range(steps):
        with guide.without_blocks() if step < steps - 40 else guide.adapting():
            svi.step(X, y)
    pyro.get_param_store().save(path)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker_is(out: str, store: str, draws: int, seed: int) -> None:
    torch.set_num_threads(1)
    rank, world = init_from_env("gloo")
    pyro.clear_param_store()
    pyro.get_param_store().load(store)
    X, y = load_logistic("german")
    guide = make_guide()
    guide(X, y)  # set up the guide; its parameters come from the loaded store
    kw = dict(gather_samples=False, num_resample=1000, warn=False)
    sharded_importance_sample(logistic_regression, guide, X, y, num_samples=2000 * world, seed=seed + 1, **kw)
    torch.distributed.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    res = sharded_importance_sample(logistic_regression, guide, X, y, num_samples=draws, seed=seed, **kw)
    cpu = time.process_time() - cpu_start  # this rank's CPU seconds: immune to other load on the machine
    torch.distributed.barrier()
    elapsed = time.perf_counter() - start
    rss: list = [None] * world
    torch.distributed.all_gather_object(rss, _peak_rss_mib())
    cpus: list = [None] * world
    torch.distributed.all_gather_object(cpus, cpu)
    if rank == 0:
        Path(out).write_text(json.dumps({
            "processes": world, "draws": draws, "seconds": elapsed, "samples_per_s": draws / elapsed,
            "log_evidence": res.log_evidence, "stderr": res.log_evidence_stderr, "ess": res.ess,
            "khat": res.khat, "peak_rss_mib": rss, "cpu_seconds": cpus}))
    torch.distributed.destroy_process_group()


def train_runs(shards, steps: int) -> dict[str, list[float]]:
    """The training scenarios on ``shards`` (a process group or its emulation); same seeds for both."""
    from pyro_snf.architectures import make_snf
    from pyro_snf.targets import DoubleWell

    torch.manual_seed(0)
    snf = make_snf(DoubleWell(), block="metropolis", hidden_dims=(32,), num_stages=2,
                   block_kwargs={"num_steps": 2, "adapt_step_size": True})
    shards.seed(1)
    fit_losses = data_parallel_fit(snf, num_iterations=steps, batch_size=256, adapt_step_sizes=True,
                                   shards=shards).loss
    pyro.clear_param_store()
    X, y = load_logistic("german")
    torch.manual_seed(0)
    guide = AutoSNF(logistic_regression, num_blocks=1)
    svi = DataParallelSVI(logistic_regression, guide, pyro.optim.Adam({"lr": 0.02}),
                          pyro.infer.Trace_ELBO(4, vectorize_particles=True), adapt_step_sizes=True,
                          shards=shards)
    svi.initialize(X, y, seed=2)
    svi_losses = [svi.step(X, y) for _ in range(steps)]
    return {"fit": fit_losses, "svi_autosnf": svi_losses,
            "step_sizes": [float(b.step_size) for b in guide.blocks]}


def worker_train(out: str, steps: int) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    rank, world = init_from_env("gloo")
    runs = train_runs(ProcessGroupShards(), steps)
    if rank == 0:
        Path(out).write_text(json.dumps(runs))
    torch.distributed.destroy_process_group()


def _launch(nproc: int, args: list[str]) -> None:
    launch_local(nproc, [sys.executable, "-m", "benchmarks.distributed", *args], timeout=3600,
                 env={"OMP_NUM_THREADS": "1"})


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=1_000_000)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--svi-steps", type=int, default=800)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--wall-time", type=float, default=60.0, help="seconds for the fixed-wall-time SE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        kind, out, *rest = a.worker
        if kind == "is":
            worker_is(out, rest[0], a.draws, a.seed)
        else:
            worker_train(out, a.train_steps)
        return {}
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="pyro_snf_dist_"))
    store = tmp / "guide.pt"
    fit_guide(store, a.svi_steps)
    rows = []
    for n in a.procs:
        out = tmp / f"is{n}.json"
        _launch(n, ["--draws", str(a.draws), "--seed", str(a.seed), "--worker", "is", str(out), str(store)])
        rows.append(json.loads(out.read_text()))
    base = rows[0]["samples_per_s"]
    print(f"\nImportance sampling, german credit, AutoSNF (2 MALA blocks), {a.draws:,} draws")
    print(f"| processes | seconds | samples/s | speedup | CPU s per rank (speedup) | log Z +/- SE | ESS | "
          f"k-hat | SE at {a.wall_time:g} s | peak RSS per process (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base
        r["se_at_wall_time"] = r["stderr"] * (r["seconds"] / a.wall_time) ** 0.5
        r["cpu_speedup"] = max(rows[0]["cpu_seconds"]) / max(r["cpu_seconds"])
        cpus = ", ".join(f"{c:.1f}" for c in r["cpu_seconds"])
        print(f"| {r['processes']} | {r['seconds']:.1f} | {r['samples_per_s']:,.0f} | {r['speedup']:.2f}x | "
              f"{cpus} ({r['cpu_speedup']:.2f}x) | {r['log_evidence']:.4f} +/- {r['stderr']:.4f} | "
              f"{r['ess']:,.0f} | {r['khat']:.2f} | "
              f"{r['se_at_wall_time']:.4f} | {', '.join(f'{m:.0f}' for m in r['peak_rss_mib'])} |")
    nproc = max(a.procs)
    out = tmp / "train.json"
    _launch(nproc, ["--train-steps", str(a.train_steps), "--worker", "train", str(out)])
    dist_runs = json.loads(out.read_text())
    torch.set_default_dtype(torch.float64)
    ref = train_runs(EmulatedShards(seed=0, world_size=nproc), a.train_steps)
    torch.set_default_dtype(torch.float32)
    print(f"\nData-parallel training ({nproc} processes) vs one process, same global batch and seeds "
          "(float64)")
    print("| run | step | loss, data-parallel | loss, one process | abs difference |")
    print("|---|---|---|---|---|")
    diffs = {}
    for key in ("fit", "svi_autosnf"):
        diffs[key] = max(abs(x - y) for x, y in zip(dist_runs[key], ref[key]))
        for i, (x, y) in enumerate(zip(dist_runs[key], ref[key])):
            print(f"| {key} | {i} | {x:.12f} | {y:.12f} | {abs(x - y):.1e} |")
    same = dist_runs["step_sizes"] == ref["step_sizes"]
    print(f"max |difference|: {diffs}; adapted step sizes equal: {same}")
    result = {"importance": rows,
              "training": {"distributed": dist_runs, "single": ref, "max_abs_diff": diffs,
                           "same_step_sizes": same}}
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
