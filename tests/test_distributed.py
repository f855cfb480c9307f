"""pyro_snf.distributed on a real 2-process gloo job (CPU), against single-process references.

One job (``tests/distributed_worker.py``, started once per module) runs every scenario on 2 ranks; each
test recomputes its scenario in this process, single-process, on the same draws: ``importance_sample``
once per shard seed (``shard_seed(seed, r)``), or :class:`EmulatedShards` (one RNG stream per shard) for
training. Tolerances: everything is float64 and the same arithmetic on the same numbers, so results are
equal up to summation order (pooled sums of ~3000 terms: < 1e-13 relative); the issue's bound, 1e-10,
is used for the pooled statistics, 1e-12 for training (5 Adam steps amplify rounding of the gradient sum,
a + b vs b + a, which is exact anyway for 2 ranks). Ranks must agree to the bit: they run the same
all-reduced arithmetic.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_snf.distributed import (
    DataParallelSVI,
    EmulatedShards,
    concatenate_results,
    data_parallel_fit,
    launch_local,
    load_checkpoint,
    restore,
    shard_seed,
    shard_sizes,
    sharded_importance_sample,
)
from pyro_snf.distributed.importance import flow_result
from pyro_snf.infer import AutoSNF, importance_sample
from pyro_snf.train import fit

WORKER = Path(__file__).with_name("distributed_worker.py")
_spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    launch_local(2, [sys.executable, str(WORKER), str(out)], timeout=240, env={"OMP_NUM_THREADS": "1"})
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def test_shards_and_seeds():
    assert shard_sizes(3001, 2) == [1501, 1500] and sum(shard_sizes(10, 3)) == 10
    assert shard_seed(5, 0) == 5 and shard_seed(5, 1) != shard_seed(6, 0)


def test_sharded_importance_equals_single_process_on_the_same_draws(ranks):
    (r0, r1), _ = ranks
    X, y = W.german()
    guide = W.build_is_guide()
    parts = []
    for k, n in enumerate(shard_sizes(W.IS_SAMPLES, 2)):
        pyro.set_rng_seed(shard_seed(W.IS_SEED, k))
        parts.append(importance_sample(W.logistic_regression, guide, X, y, num_samples=n, warn=False))
    ref = concatenate_results(parts)
    lw = torch.cat([p.log_weights for p in parts])
    w = (lw - lw.max()).exp()
    independent = {"log_evidence": float(torch.logsumexp(lw, 0) - math.log(len(lw))),  # by hand
                   "ess": float(w.sum() ** 2 / (w ** 2).sum())}
    assert math.isfinite(ref.khat) and ref.ess > 1.0
    for r in (r0, r1):
        got = r["is"]
        assert got["shard_sizes"] == (1501, 1500)
        assert torch.equal(got["log_weights"], lw) and torch.equal(got["w"], ref.samples["w"])
        for key, want in (("log_evidence", ref.log_evidence), ("stderr", ref.log_evidence_stderr),
                          ("ess", ref.ess), ("khat", ref.khat)):
            assert _close(got[key], want, 1e-10), key
        for key, want in independent.items():
            assert _close(got[key], want, 1e-10), key
    assert torch.equal(r0["is"]["resampled"], r1["is"]["resampled"])


def test_resample_without_gathering_draws_is_the_same_resample(ranks):
    (r0, r1), _ = ranks
    for r in (r0, r1):
        small = r["is_resample_only"]
        assert small["num_gathered"] == 0  # no pooled draws held, only the resample
        assert torch.equal(small["resampled"], r0["is"]["resampled"])
        assert small["log_evidence"] == r0["is"]["log_evidence"]


def test_data_parallel_fit_equals_single_process_same_global_batch(ranks):
    (r0, r1), _ = ranks
    snf = W.build_snf()
    opt = torch.optim.Adam(snf.parameters(), lr=5e-3)
    hist = data_parallel_fit(snf, num_iterations=W.FIT_STEPS, batch_size=64, optimizer=opt,
                             adapt_step_sizes=True, shards=EmulatedShards(seed=W.FIT_SEED, world_size=2))
    assert r0["fit"]["step_sizes"] == r1["fit"]["step_sizes"]  # identical on both ranks, to the bit
    assert r0["fit"]["step_sizes"] != [0.1] * len(snf.blocks)  # and they did adapt
    for r in (r0, r1):
        assert all(_close(a, b, 1e-12) for a, b in zip(r["fit"]["loss"], hist.loss))
        assert all(_close(a, float(b.step_size), 1e-12) for a, b in zip(r["fit"]["step_sizes"], snf.blocks))
        for name, value in snf.module.state_dict().items():
            torch.testing.assert_close(r["fit"]["state"][name], value, rtol=1e-12, atol=1e-12)
            assert torch.equal(r["fit"]["state"][name], r0["fit"]["state"][name])


def test_one_emulated_shard_is_fit():
    """The harness itself: one shard, no adaptation, is pyro_snf.train.fit with the same seed."""
    snf_a, snf_b = W.build_snf(), W.build_snf()
    torch.manual_seed(9)
    ref = fit(snf_a, num_iterations=3, batch_size=32, progress=False)
    got = data_parallel_fit(snf_b, num_iterations=3, batch_size=32, shards=EmulatedShards(9, 1))
    assert got.loss == ref.loss


def test_rank0_checkpoint_loads_in_a_fresh_process_with_the_same_numbers(ranks):
    (r0, _), out = ranks
    torch.manual_seed(123)  # a differently initialised flow: everything must come from the checkpoint
    snf = W.build_snf()
    opt = torch.optim.Adam(snf.parameters(), lr=5e-3)
    state = restore(load_checkpoint(out / "fit.pt"), module=snf.module, optimizer=opt)
    assert state["extra"]["loss"] == r0["fit"]["loss"]
    parts = []
    for k, n in enumerate(shard_sizes(W.FLOW_SAMPLES, 2)):
        pyro.set_rng_seed(shard_seed(W.FLOW_SEED, k))
        parts.append(flow_result(snf, n, batch_size=500))
    ref = concatenate_results(parts)
    for key, want in (("log_evidence", ref.log_evidence), ("stderr", ref.log_evidence_stderr),
                      ("ess", ref.ess), ("khat", ref.khat)):
        assert _close(r0["flow"][key], want, 1e-10), key


@pytest.mark.parametrize("kind", ["autosnf", "amortized"])
def test_data_parallel_svi_equals_single_process(ranks, kind):
    (r0, r1), _ = ranks
    svi, guide, args = W.build_svi(kind, EmulatedShards(seed=0, world_size=2))
    before = [float(b.step_size) for b in guide.blocks]
    svi.initialize(*args, seed=W.SVI_SEED)
    losses = [svi.step(*args) for _ in range(W.SVI_STEPS)]
    store = pyro.get_param_store()
    assert r0[kind]["step_sizes"] == r1[kind]["step_sizes"]  # identical on both ranks, to the bit
    assert all(a != b for a, b in zip(r0[kind]["step_sizes"], before))  # and they did adapt
    assert r0[kind]["params"].keys() == r1[kind]["params"].keys() == set(store.keys())
    for r in (r0, r1):
        assert all(_close(a, b, 1e-12) for a, b in zip(r[kind]["loss"], losses))
        assert all(_close(a, float(b.step_size), 1e-12) for a, b in zip(r[kind]["step_sizes"], guide.blocks))
        for name, value in r[kind]["params"].items():
            assert torch.equal(value, r0[kind]["params"][name]), name
            torch.testing.assert_close(value, store[name].detach(), rtol=1e-12, atol=1e-12)


def test_one_emulated_shard_is_pyro_svi():
    """DataParallelSVI with one shard and no adaptation takes Pyro's SVI steps exactly."""
    y = torch.tensor([0.3, 1.1, 0.7])
    results = []
    for parallel in (False, True):
        pyro.clear_param_store()
        guide = AutoSNF(_normal_model, num_blocks=1)
        elbo, optim = Trace_ELBO(num_particles=3, vectorize_particles=True), pyro.optim.Adam({"lr": 0.05})
        if parallel:
            svi = DataParallelSVI(_normal_model, guide, optim, elbo, shards=EmulatedShards(4, 1))
            svi.initialize(y, seed=4)
        else:
            svi = SVI(_normal_model, guide, optim, elbo)
            pyro.set_rng_seed(4)
            with torch.no_grad():
                elbo.loss(_normal_model, guide, y)
            pyro.set_rng_seed(4)
        results.append([svi.step(y) for _ in range(3)])
    assert results[0] == results[1]


def _normal_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_errors_name_the_problem_and_the_fix(ranks):
    (r0, r1), _ = ranks
    for r in (r0, r1):
        assert "differs across ranks" in r["errors"]["num_samples"]
        assert "same global values" in r["errors"]["num_samples"]
        assert "guide's parameters" in r["errors"]["guide"] and "broadcast" in r["errors"]["guide"]
        assert "max_gather_bytes" in r["errors"]["budget"] and "num_resample" in r["errors"]["budget"]
    with pytest.raises(RuntimeError, match="process group.*torchrun.*importance_sample"):
        sharded_importance_sample(_normal_model, lambda y: None, torch.ones(2), num_samples=10, seed=0)
    with pytest.raises(RuntimeError, match="process group"):
        data_parallel_fit(W.build_snf(), num_iterations=1, batch_size=4)
    snf = W.build_snf()
    with snf.blocks[0].adapting(), pytest.raises(RuntimeError, match="inside adapting.*adapt_step_sizes"):
        data_parallel_fit(snf, num_iterations=1, batch_size=4, shards=EmulatedShards(0, 2))
    with pytest.raises(ValueError, match="multiple of the world size"):
        data_parallel_fit(snf, num_iterations=1, batch_size=5, shards=EmulatedShards(0, 2))


def test_readme_torchrun_command_runs_and_rank0_checkpoint_loads(tmp_path):
    """README's launch line, through torchrun itself (``--standalone``: a free rendezvous port), small sizes:
    both ranks finish, rank 0 alone prints the pooled numbers and writes the checkpoint, which loads here."""
    ckpt = tmp_path / "guide.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pyro_snf.examples.distributed_evidence", "--svi-steps", "3", "--draws", "600",
           "--checkpoint", str(ckpt)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "log Z =" in line]
    assert len(lines) == 1 and lines[0].startswith("2 process(es)"), proc.stdout
    log_z, se = map(float, re.search(r"log Z = (\S+) \+- (\S+),", lines[0]).groups())
    assert math.isfinite(log_z) and se > 0
    state = load_checkpoint(ckpt)
    assert state["module"] and state["param_store"]["params"], "the checkpoint holds the trained guide"
