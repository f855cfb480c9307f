"""Stochastic blocks: MCMC and Langevin layers with exact path terms.

Each block file holds its proposal or integrator; the shared kernel parts (the Metropolis-Hastings
accept step, frozen dead particles, statistics) are in :mod:`pyro_snf.blocks.kernels`, the names
of the block classes in :data:`BLOCKS` (:mod:`pyro_snf.blocks.registry`).
"""

from pyro_snf.blocks.base import BlockInfo, BlockStep, StochasticBlock
from pyro_snf.blocks.hmc import HMCBlock
from pyro_snf.blocks.langevin import LangevinBlock
from pyro_snf.blocks.mala import MALABlock
from pyro_snf.blocks.metropolis import MetropolisBlock
from pyro_snf.blocks.pulled_back import PulledBackBlock
from pyro_snf.blocks.registry import BLOCKS, BlockFactory, block_factory, resolve_block
from pyro_snf.blocks.underdamped import UnderdampedLangevinBlock

__all__ = [
    "BLOCKS",
    "BlockFactory",
    "BlockInfo",
    "BlockStep",
    "HMCBlock",
    "LangevinBlock",
    "MALABlock",
    "MetropolisBlock",
    "PulledBackBlock",
    "StochasticBlock",
    "UnderdampedLangevinBlock",
    "block_factory",
    "resolve_block",
]
