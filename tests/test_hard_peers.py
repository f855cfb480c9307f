"""The PyMC twins of :mod:`benchmarks.hard.peers` are the Pyro models of :mod:`benchmarks.hard.cases`:
their log joints ``log p(z, y)`` agree to 1e-6 (relative, float64) at random prior points, in the
constrained space and without Jacobians (``remove_value_transforms``), so the twins' posteriors and
evidences are the Pyro ones and the scored coordinates map one to one."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymc")

import pyro  # noqa: E402
import torch  # noqa: E402

from benchmarks.hard.cases import HardCase, cases  # noqa: E402
from benchmarks.hard.peers import combine_log_evidence, final_log_evidence, pymc_model  # noqa: E402

CASES = cases()


def _f64(a: object) -> object:
    return a.double() if isinstance(a, torch.Tensor) else a


def _prior_points(case: HardCase, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` draws of the latent sites from the Pyro prior (float64), observed sites left out."""
    args = tuple(_f64(a) for a in case.args)
    pyro.set_rng_seed(seed)
    out = []
    for _ in range(n):
        tr = pyro.poutine.trace(case.model).get_trace(*args)
        out.append({name: tr.nodes[name]["value"].detach() for name in case.sites})
    return out


def _pyro_log_joint(case: HardCase, values: dict[str, torch.Tensor]) -> float:
    args = tuple(_f64(a) for a in case.args)
    conditioned = pyro.poutine.condition(case.model, data=values)
    return float(pyro.poutine.trace(conditioned).get_trace(*args).log_prob_sum())


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_twin_log_joint_matches_pyro(case: HardCase) -> None:
    from pymc.model.transform.conditioning import remove_value_transforms

    twin = pymc_model(case)
    assert [rv.name for rv in twin.free_RVs] == list(case.sites)
    model = remove_value_transforms(twin)
    for rv, shape in zip(model.free_RVs, case.sites.values()):
        assert tuple(model.initial_point()[model.rvs_to_values[rv].name].shape) == shape
    logp = model.compile_logp(jacobian=False, mode="FAST_COMPILE")  # no C compilation: fast
    for values in _prior_points(case, 3, seed=11):
        point = {model.rvs_to_values[rv].name: values[rv.name].numpy() for rv in model.free_RVs}
        pyro_lp = _pyro_log_joint(case, values)
        assert np.isfinite(pyro_lp)
        assert float(logp(point)) == pytest.approx(pyro_lp, rel=1e-6, abs=1e-9)


def test_final_log_evidence_reads_every_storage_layout() -> None:
    nan = float("nan")
    square = np.array([[nan, nan, -3.0], [nan, nan, -4.0]], dtype=object)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = [nan, -3.0], [nan, nan, nan, -4.0]
    for stored in (square, ragged):
        assert final_log_evidence(stored, 2).tolist() == [-3.0, -4.0]
    assert final_log_evidence(np.array([nan, -5.0]), 1).tolist() == [-5.0]
    log_z, se = combine_log_evidence(np.array([-3.0, -3.0]))
    assert log_z == pytest.approx(-3.0) and se == pytest.approx(0.0)
