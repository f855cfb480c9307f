"""Step-size adaptation of the Metropolis-adjusted blocks (``adapt_step_size=True``).

The rule ``log step += rate * (acceptance - target)`` runs after every call inside
``with block.adapting():`` and only there. Checked here: it reaches the target acceptance from far
too small and far too large steps (a deterministic consequence of the seeded run; the tolerance
0.05 is about ten standard errors of the acceptance averaged over the last 100 calls of 256
particles); outside the context no call changes the step (with or without gradients, in training
or eval mode); inside it adapts under ``no_grad`` too; weights drawn while it adapts stay exact
(log Z within four standard errors); it follows the particles' device and dtype; and a
``PulledBackBlock`` adapts its wrapped block. The block types are the registry's
(``adjusted_block_case``, ``unadjusted_block_case`` from ``conftest.py``).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_snf import (
    HMCBlock,
    ImportanceWeights,
    MALABlock,
    MetropolisBlock,
    StochasticNormalizingFlow,
)
from pyro_snf.blocks import PulledBackBlock

TARGETS = {"metropolis": 0.234, "mala": 0.574, "hmc": 0.651}  # the optimal rates, by block name


def gaussian(x: torch.Tensor) -> torch.Tensor:
    """Standard normal energy scaled per coordinate (sd 0.5 ... 2), unnormalised."""
    sd = torch.linspace(0.5, 2.0, x.shape[-1], dtype=x.dtype, device=x.device)
    return 0.5 * (x / sd).pow(2).sum(-1)


@pytest.mark.parametrize("start", [0.01, 5.0])
def test_adaptation_reaches_the_target_acceptance(adjusted_block_case, start):
    torch.manual_seed(0)
    name = adjusted_block_case.name
    block = adjusted_block_case.cls(start, 1, adapt_step_size=True)
    assert block.target_accept == block.default_target_accept == TARGETS.get(name, block.target_accept)
    x = torch.randn(256, 10) * torch.linspace(0.5, 2.0, 10)
    rates = []
    with block.adapting():
        for _ in range(400):
            x, _ = block.forward_step(x, gaussian)
            rates.append(float(block.last_info.acceptance_rate))
    assert abs(sum(rates[-100:]) / 100 - block.target_accept) < 0.05, (rates[-5:], float(block.step_size))


def test_sampling_never_changes_the_step_size_outside_adapting(adjusted_block_case):
    """Calls with gradients in training mode (an optimiser step), under ``no_grad``, in ``eval()``
    mode, forward and backward: the step stays; the same call inside ``adapting()`` moves it."""
    block = adjusted_block_case.cls(0.01, 2, adapt_step_size=True)
    x = torch.randn(64, 3)
    before = block.log_step_size.clone()
    assert block.training and torch.is_grad_enabled()
    block.forward_step(x, gaussian)
    block.backward_step(x, gaussian)
    block.step(x, gaussian)
    with torch.no_grad():
        block.forward_step(x, gaussian)
    block.eval()
    block.forward_step(x, gaussian)
    assert torch.equal(block.log_step_size, before)
    block.train()
    with block.adapting():
        block.forward_step(x, gaussian)
    assert float(block.step_size) > 0.01  # acceptance ~1 > the target: the step grows
    assert not block.log_step_size.requires_grad


def test_adapting_context_forces_adaptation_under_no_grad():
    block = MetropolisBlock(0.01, 2, adapt_step_size=True)
    x = torch.randn(64, 3)
    with torch.no_grad(), block.adapting():
        block.forward_step(x, gaussian)
    assert float(block.step_size) > 0.01
    before = float(block.step_size)
    with torch.no_grad():  # the context is over: frozen again
        block.forward_step(x, gaussian)
    assert float(block.step_size) == before
    with pytest.raises(ValueError, match="without adapt_step_size=True"), MALABlock(0.1).adapting():
        pass


def test_weights_drawn_while_adapting_are_exact():
    """Each call runs one fixed kernel; adaptation between calls cannot bias the weights."""
    torch.manual_seed(1)
    base = dist.Normal(torch.zeros(2), 2.2 * torch.ones(2)).to_event(1)
    block = MetropolisBlock(0.1, 3, beta=0.5, adapt_step_size=True, adapt_rate=0.3)
    snf = StochasticNormalizingFlow(base, [block], gaussian)
    log_w, steps = [], []
    for _ in range(40):
        with block.adapting():
            x = snf.rsample((1000,))  # with gradients, as in training: the block adapts after the call
        log_w.append(snf.log_weight(x).detach())
        steps.append(float(block.step_size))
    assert max(steps) / min(steps) > 2.0  # the kernel did change between calls
    iw = ImportanceWeights(torch.cat(log_w))
    log_z = 2 * 0.5 * math.log(2 * math.pi) + math.log(0.5 * 2.0)  # sd (0.5, 2) in two dimensions
    est, se = float(iw.log_evidence), float(iw.log_evidence_stderr)
    assert se < 0.02 and abs(est - log_z) < 4 * se, (est, log_z, se)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adaptation_follows_dtype_and_device(dtype, device):
    block = HMCBlock(0.05, 1, num_leapfrog_steps=2, adapt_step_size=True).to(device=device, dtype=dtype)
    x = torch.randn(32, 4, dtype=dtype, device=device)
    with block.adapting():
        y, dS = block.forward_step(x, gaussian)
    assert y.dtype == dS.dtype == block.log_step_size.dtype == dtype
    assert block.log_step_size.device == x.device and float(block.step_size) > 0.05


def test_pulled_back_block_adapts_its_wrapped_block():
    inner = MALABlock(0.01, 2, adapt_step_size=True)
    block = PulledBackBlock(inner, [])
    assert block.adapt_step_size and block.metropolis_adjusted
    x = torch.randn(64, 3)
    before = inner.log_step_size.clone()
    block.forward_step(x, gaussian)
    assert torch.equal(inner.log_step_size, before)
    with torch.no_grad(), block.adapting():
        block.forward_step(x, gaussian)
    assert float(inner.step_size) > 0.01 and torch.equal(block.step_size, inner.step_size)
    fixed = PulledBackBlock(MALABlock(), [])
    with pytest.raises(ValueError, match="without adapt_step_size=True"), fixed.adapting():
        pass


def test_unadjusted_blocks_cannot_adapt(unadjusted_block_case):
    assert not unadjusted_block_case.cls.metropolis_adjusted
    with pytest.raises(ValueError, match="accepts every move.*cannot be adapted"):
        unadjusted_block_case.make(adapt_step_size=True)
    with pytest.raises(ValueError, match="accepts every move.*cannot be adapted"):
        unadjusted_block_case.make(adapt_step_size=True, target_accept=0.5)


def test_bad_adaptation_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="adapt_step_size and learn_step_size"):
        MALABlock(0.1, adapt_step_size=True, learn_step_size=True)
    with pytest.raises(ValueError, match="target_accept must lie in"):
        MetropolisBlock(0.1, adapt_step_size=True, target_accept=1.5)
    with pytest.raises(ValueError, match="adapt_rate must be > 0"):
        HMCBlock(0.1, adapt_step_size=True, adapt_rate=0.0)
