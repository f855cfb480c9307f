"""mcmc_augment: every snapshot of the pool is again an exact sample of the target; bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_snf.augment import mcmc_augment
from pyro_snf.blocks import MetropolisBlock
from pyro_snf.targets import DoubleWell
from pyro_snf.targets.double_well import LEFT_WELL_MASS

N = 4000


def test_every_snapshot_keeps_the_target(adjusted_block_case, device, dtype):
    """Rows of one snapshot are N independent chains each started from an exact draw, so each snapshot
    is N iid draws of the target: its left-well mass and the moments of the standard normal x2 lie
    within 5 standard errors of the exact values, for every Metropolis-adjusted block."""
    target = DoubleWell()
    data = target.sample(N, dtype=dtype, device=device)
    block = adjusted_block_case.make(num_steps=10)
    pool = mcmc_augment(data, target, block.to(device=device, dtype=dtype), num_snapshots=3)
    assert pool.shape == (4 * N, 2) and pool.dtype == dtype and pool.device.type == device.type
    assert torch.equal(pool[:N], data)
    snapshots = pool[N:].reshape(3, N, 2).double().cpu()
    assert (snapshots != data.double().cpu()).any(-1).float().mean() > 0.5  # the chains moved
    se_mass = math.sqrt(LEFT_WELL_MASS * (1 - LEFT_WELL_MASS) / N)
    for snap in snapshots:
        assert abs(float((snap[:, 0] < 0).double().mean()) - LEFT_WELL_MASS) < 5 * se_mass
        assert abs(float(snap[:, 1].mean())) < 5 / math.sqrt(N)
        assert abs(float(snap[:, 1].pow(2).mean()) - 1.0) < 5 * math.sqrt(2.0 / N)


def test_data_from_another_density_move_toward_the_target():
    """The documented caveat: data not drawn from the target are moved toward it (x2 drawn with variance
    4 relaxes to the target's 1 within 100 steps of 0.5), so the pool mixes two densities. Tolerances: 5
    standard errors of a sample variance of N normal draws, sigma^2 sqrt(2 / N)."""
    target = DoubleWell()
    data = target.sample(N)
    data[:, 1] *= 2.0
    pool = mcmc_augment(data, target, _metropolis(num_steps=50), num_snapshots=2)
    variances = pool[:, 1].reshape(3, N).var(-1)
    assert abs(float(variances[0]) - 4.0) < 5 * 4.0 * math.sqrt(2.0 / N)  # the data as drawn
    assert abs(float(variances[2]) - 1.0) < 5 * math.sqrt(2.0 / N)  # the target's variance


def _metropolis(**kwargs):
    return MetropolisBlock(**{"step_size": 0.5, "num_steps": 10, **kwargs})


def test_chunks_give_the_same_shapes_and_keep_the_data():
    target = DoubleWell()
    data = target.sample(10)
    pool = mcmc_augment(data, target, _metropolis(), num_snapshots=2, chunk_size=3)
    assert pool.shape == (30, 2) and torch.equal(pool[:10], data)


def test_unadjusted_blocks_are_refused(unadjusted_block_case):
    with pytest.raises(ValueError, match="no Metropolis test"):
        mcmc_augment(torch.zeros(4, 2), DoubleWell(), unadjusted_block_case.make())


@pytest.mark.parametrize(
    "kwargs, block_kwargs, match",
    [
        ({"num_snapshots": 0}, {}, "num_snapshots must be >= 1"),
        ({"chunk_size": 0}, {}, "chunk_size must be >= 1"),
        ({}, {"beta": 0.5}, "beta=1.0"),
    ],
)
def test_bad_settings_are_refused(kwargs, block_kwargs, match):
    with pytest.raises(ValueError, match=match):
        mcmc_augment(torch.zeros(4, 2), DoubleWell(), _metropolis(**block_kwargs), **kwargs)


def test_bad_data_are_refused():
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        mcmc_augment(torch.zeros(4), DoubleWell(), _metropolis())
    data = torch.zeros(4, 2)
    data[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"first is row 2\) have a non-finite energy"):
        mcmc_augment(data, DoubleWell(), _metropolis())


def test_a_step_too_large_warns():
    with pytest.warns(UserWarning, match="mostly copies of the data"):
        mcmc_augment(DoubleWell().sample(200), DoubleWell(), _metropolis(step_size=1e3), num_snapshots=1)
