"""One rank of the 2-process gloo job behind ``tests/test_distributed.py`` (also runs under
``torchrun --nproc_per_node 2 tests/distributed_worker.py OUTDIR``).

Every scenario builds its objects with the ``build_*`` functions below, which the test process also
calls to compute the single-process references (:class:`pyro_snf.distributed.EmulatedShards`, or
``importance_sample`` once per shard seed). Each rank saves what it computed to ``OUTDIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_snf.architectures import make_snf
from pyro_snf.examples.datasets import load_logistic
from pyro_snf.examples.models import logistic_regression
from pyro_snf.infer import AmortizedSNF, AutoSNF
from pyro_snf.targets import DoubleWell

IS_SEED, FIT_SEED, SVI_SEED, FLOW_SEED = 11, 5, 3, 21
IS_SAMPLES, FLOW_SAMPLES = 3001, 2001  # odd: the shards differ in size
FIT_STEPS, SVI_STEPS = 5, 4


def german(rows: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = load_logistic("german", dtype=torch.float64)
    return X[:rows], y[:rows]


def build_is_guide() -> AutoNormal:
    pyro.clear_param_store()
    X, y = german()
    guide = AutoNormal(logistic_regression, init_scale=0.05)
    pyro.set_rng_seed(0)
    guide(X, y)
    return guide


def build_snf() -> Any:
    torch.manual_seed(0)
    return make_snf(DoubleWell(), block="metropolis", hidden_dims=(8,), num_stages=2, num_couplings=1,
                    block_kwargs={"num_steps": 2, "adapt_step_size": True})


def local_model(x: torch.Tensor) -> None:
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1), obs=x)


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(x).chunk(2, -1)
        return loc, log_scale.exp()


def amortized_data() -> list[torch.Tensor]:
    x = torch.linspace(-1.0, 2.0, 8, dtype=torch.float64)[:, None]
    return [x[:4], x[4:]]


def build_svi(kind: str, shards: Any) -> tuple[Any, Any, tuple]:
    """``(svi, guide, args)`` for ``kind`` in ``("autosnf", "amortized")``; args are shard 0's (emulated:
    PerShard values) or this rank's."""
    from pyro_snf.distributed import DataParallelSVI, EmulatedShards, PerShard

    pyro.clear_param_store()
    torch.manual_seed(0)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    optim = pyro.optim.Adam({"lr": 0.02})
    if kind == "autosnf":
        X, y = german(60)
        guide = AutoSNF(logistic_regression, num_blocks=1)
        svi = DataParallelSVI(logistic_regression, guide, optim, elbo, adapt_step_sizes=True, shards=shards)
        return svi, guide, (X, y)
    guide = AmortizedSNF(local_model, Encoder(), site="z", plate="data", num_blocks=1)
    parts = amortized_data()
    arg = PerShard(parts) if isinstance(shards, EmulatedShards) else parts[shards.rank]
    return (DataParallelSVI(local_model, guide, optim, elbo, reduce="sum", adapt_step_sizes=True,
                            shards=shards), guide, (arg,))


def _errors(rank: int) -> dict[str, str]:
    """The messages of calls that must fail on every rank (so that no rank hangs in a collective)."""
    from pyro_snf.distributed import sharded_importance_sample

    X, y = german()
    guide = build_is_guide()
    cases = {"num_samples": dict(num_samples=100 + rank, seed=0),
             "budget": dict(num_samples=100, seed=0, gather_samples=True, max_gather_bytes=1000),
             "guide": dict(num_samples=100, seed=0)}
    out = {}
    for key, kwargs in cases.items():
        if key == "guide" and rank == 1:
            with torch.no_grad():
                next(iter(pyro.get_param_store().named_parameters()))[1].add_(1e-3)
        try:
            sharded_importance_sample(logistic_regression, guide, X, y, warn=False, **kwargs)
        except ValueError as e:
            out[key] = str(e)
    return out


def main(outdir: str) -> None:
    import time

    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    from pyro_snf.distributed import (
        ProcessGroupShards,
        data_parallel_fit,
        init_from_env,
        save_checkpoint,
        sharded_flow_sample,
        sharded_importance_sample,
        training_state,
    )

    rank, world = init_from_env("gloo")
    out: dict[str, Any] = {"rank": rank, "world": world, "seconds": {"init": time.perf_counter() - start}}
    X, y = german()
    guide = build_is_guide()
    res = sharded_importance_sample(logistic_regression, guide, X, y, num_samples=IS_SAMPLES, seed=IS_SEED,
                                    gather_samples=True, num_resample=500, warn=False)
    out["is"] = {"log_evidence": res.log_evidence, "stderr": res.log_evidence_stderr, "ess": res.ess,
                 "khat": res.khat, "log_weights": res.log_weights, "w": res.samples["w"],
                 "resampled": res.resampled["w"], "shard_sizes": res.shard_sizes}
    small = sharded_importance_sample(logistic_regression, guide, X, y, num_samples=IS_SAMPLES, seed=IS_SEED,
                                      gather_samples=False, num_resample=500, warn=False)
    out["seconds"]["is"] = time.perf_counter() - start
    out["is_resample_only"] = {"resampled": small.resampled["w"], "num_gathered": len(small.samples),
                               "log_evidence": small.log_evidence}

    snf = build_snf()
    shards = ProcessGroupShards(seed=FIT_SEED)
    opt = torch.optim.Adam(snf.parameters(), lr=5e-3)
    hist = data_parallel_fit(snf, num_iterations=FIT_STEPS, batch_size=64, optimizer=opt,
                             adapt_step_sizes=True, shards=shards)
    out["fit"] = {"loss": hist.loss, "state": {k: v.clone() for k, v in snf.module.state_dict().items()},
                  "step_sizes": [float(b.step_size) for b in snf.blocks]}
    save_checkpoint(f"{outdir}/fit.pt", training_state(module=snf.module, optimizer=opt, param_store=False,
                                                         extra={"loss": hist.loss}))
    flow = sharded_flow_sample(snf, FLOW_SAMPLES, seed=FLOW_SEED, batch_size=500)
    out["seconds"]["fit"] = time.perf_counter() - start
    out["flow"] = {"log_evidence": flow.log_evidence, "stderr": flow.log_evidence_stderr, "ess": flow.ess,
                   "khat": flow.khat}

    for kind in ("autosnf", "amortized"):
        svi, guide, args = build_svi(kind, ProcessGroupShards())
        svi.initialize(*args, seed=SVI_SEED)
        losses = [svi.step(*args) for _ in range(SVI_STEPS)]
        store = pyro.get_param_store()
        out[kind] = {"loss": losses, "params": {k: store[k].detach().clone() for k in sorted(store.keys())},
                     "step_sizes": [float(b.step_size) for b in guide.blocks]}

    out["seconds"]["svi"] = time.perf_counter() - start
    out["errors"] = _errors(rank)
    out["seconds"]["errors"] = time.perf_counter() - start
    torch.save(out, f"{outdir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
