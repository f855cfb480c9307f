"""Shared fixtures: seeds, devices, dtypes, and the one registry of block types the tests run.

Adding a block class to :data:`pyro_snf.blocks.BLOCKS` needs one line in :data:`BLOCK_CASES` (a
test in ``test_blocks.py`` checks it); the fixtures ``block_case`` (every block type),
``adjusted_block_case`` (those with ``metropolis_adjusted``) and ``unadjusted_block_case`` (the
others) then run every test written for them on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pyro
import pytest
import torch

from pyro_snf.blocks import (
    HMCBlock,
    LangevinBlock,
    MALABlock,
    MetropolisBlock,
    StochasticBlock,
    UnderdampedLangevinBlock,
)

# Tiny tensors on few cores: one intra-op thread is faster and keeps shared machines responsive.
torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class BlockCase(NamedTuple):
    """A block type as the tests build it: the class and its default constructor arguments."""

    cls: type[StochasticBlock]
    kwargs: dict[str, Any]
    name: str = ""

    def make(self, **overrides: Any) -> StochasticBlock:
        """A new block with the case's arguments, ``overrides`` taking precedence."""
        return self.cls(**{**self.kwargs, **overrides})

    @property
    def adjusted(self) -> bool:
        return self.cls.metropolis_adjusted


def _named(**cases: BlockCase) -> dict[str, BlockCase]:
    return {name: case._replace(name=name) for name, case in cases.items()}


#: one line per block type: the class and the kwargs the tests use (files may override some).
BLOCK_CASES: dict[str, BlockCase] = _named(
    metropolis=BlockCase(MetropolisBlock, dict(step_size=0.5, num_steps=5)),
    mala=BlockCase(MALABlock, dict(step_size=0.1, num_steps=5)),
    hmc=BlockCase(HMCBlock, dict(step_size=0.2, num_steps=3, num_leapfrog_steps=3)),
    langevin=BlockCase(LangevinBlock, dict(step_size=0.05, num_steps=5)),
    underdamped=BlockCase(UnderdampedLangevinBlock, dict(step_size=0.2, num_steps=5, friction=1.0)),
)
ADJUSTED = [name for name, case in BLOCK_CASES.items() if case.adjusted]
UNADJUSTED = [name for name, case in BLOCK_CASES.items() if not case.adjusted]


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from the same seeds and an empty Pyro param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(scope="session")
def block_cases() -> dict[str, BlockCase]:
    """The whole registry, by name."""
    return BLOCK_CASES


@pytest.fixture(params=list(BLOCK_CASES))
def block_case(request) -> BlockCase:
    """Every block type."""
    return BLOCK_CASES[request.param]


@pytest.fixture(params=ADJUSTED)
def adjusted_block_case(request) -> BlockCase:
    """The Metropolis-adjusted block types (``metropolis_adjusted``)."""
    return BLOCK_CASES[request.param]


@pytest.fixture(params=UNADJUSTED)
def unadjusted_block_case(request) -> BlockCase:
    """The block types without a Metropolis test (unadjusted dynamics)."""
    return BLOCK_CASES[request.param]
