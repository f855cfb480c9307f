"""Stochastic blocks: MCMC and Langevin layers with exact path terms."""

from pyro_snf.blocks.base import BlockInfo, StochasticBlock
from pyro_snf.blocks.hmc import HMCBlock
from pyro_snf.blocks.langevin import LangevinBlock
from pyro_snf.blocks.mala import MALABlock
from pyro_snf.blocks.metropolis import MetropolisBlock
from pyro_snf.blocks.underdamped import UnderdampedLangevinBlock

__all__ = [
    "BlockInfo",
    "HMCBlock",
    "LangevinBlock",
    "MALABlock",
    "MetropolisBlock",
    "StochasticBlock",
    "UnderdampedLangevinBlock",
]
