"""The evidence of a Pyro model from several processes: data-parallel SVI of an ``AutoSNF`` guide, then
importance sampling sharded over the ranks, pooled exactly (:mod:`pyro_snf.distributed`).

    torchrun --standalone --nproc_per_node 2 -m pyro_snf.examples.distributed_evidence --draws 1000000

Every rank builds the same guide, :class:`~pyro_snf.distributed.DataParallelSVI` trains it (each rank
draws ``num_particles`` of the ELBO's particles from its own seed stream; gradients and the blocks'
acceptance are averaged over ranks, so the parameters and step sizes stay identical everywhere), rank 0
writes a checkpoint, and :func:`~pyro_snf.distributed.sharded_importance_sample` splits ``--draws`` draws
over the ranks: the printed log evidence, SE, ESS and PSIS k-hat are those of one process on the union of
the ranks' draws. The model is the german credit logistic regression (1,000 rows, 25 coefficients). Under
one process (``python -m pyro_snf.examples.distributed_evidence``) it starts a one-rank gloo group itself.
"""

from __future__ import annotations

import argparse
import os
import time

import pyro
import torch
from pyro.infer import Trace_ELBO

from pyro_snf.distributed import (
    DataParallelSVI,
    free_port,
    init_from_env,
    save_checkpoint,
    sharded_importance_sample,
    training_state,
)
from pyro_snf.examples.datasets import load_logistic
from pyro_snf.examples.models import logistic_regression
from pyro_snf.infer import AutoSNF


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svi-steps", type=int, default=500)
    parser.add_argument("--num-particles", type=int, default=8, help="ELBO particles per rank")
    parser.add_argument("--draws", type=int, default=100_000, help="importance draws in total")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="", help="where rank 0 writes the trained guide")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one intra-op thread per process: the ranks share the cores
    if "RANK" not in os.environ:  # plain `python -m`: a one-process group
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    rank, world = init_from_env("gloo")
    try:
        X, y = load_logistic("german")
        pyro.clear_param_store()
        guide = AutoSNF(logistic_regression, num_blocks=2, block="mala")
        svi = DataParallelSVI(logistic_regression, guide, pyro.optim.Adam({"lr": 0.01}),
                              Trace_ELBO(args.num_particles, vectorize_particles=True), adapt_step_sizes=True)
        svi.initialize(X, y, seed=args.seed)
        start = time.perf_counter()
        for _ in range(args.svi_steps):
            loss = svi.step(X, y)
        fit_s = time.perf_counter() - start
        if args.checkpoint:
            save_checkpoint(args.checkpoint, training_state(module=guide))
        start = time.perf_counter()
        res = sharded_importance_sample(logistic_regression, guide, X, y, num_samples=args.draws,
                                        seed=args.seed + 1, gather_samples=False, num_resample=1000)
        is_s = time.perf_counter() - start
        out = {"world_size": world, "final_loss": loss, "log_evidence": res.log_evidence,
               "stderr": res.log_evidence_stderr, "ess": res.ess, "khat": res.khat,
               "fit_seconds": fit_s, "is_seconds": is_s}
        if rank == 0:
            print(f"{world} process(es): SVI {args.svi_steps} steps in {fit_s:.1f} s (final loss "
                  f"{loss:.2f}); {args.draws} draws in {is_s:.1f} s: log Z = {res.log_evidence:.4f} +- "
                  f"{res.log_evidence_stderr:.4f}, ESS {res.ess:.0f}, k-hat {res.khat:.2f}")
        return out
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
