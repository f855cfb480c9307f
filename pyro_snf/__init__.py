"""pyro_snf: Stochastic Normalizing Flows for Pyro (Wu, Köhler & Noé, NeurIPS 2020)."""

from pyro_snf.augment import mcmc_augment
from pyro_snf.blocks import (
    BlockInfo,
    HMCBlock,
    LangevinBlock,
    MALABlock,
    MetropolisBlock,
    StochasticBlock,
    UnderdampedLangevinBlock,
)
from pyro_snf.distribution import StochasticNormalizingFlow
from pyro_snf.energy import AnnealedEnergy
from pyro_snf.train import TrainHistory, fit
from pyro_snf.weights import ImportanceWeights, sanitize_log_weights

__version__ = "0.1.0"

__all__ = [
    "AnnealedEnergy",
    "BlockInfo",
    "HMCBlock",
    "ImportanceWeights",
    "LangevinBlock",
    "MALABlock",
    "MetropolisBlock",
    "StochasticBlock",
    "StochasticNormalizingFlow",
    "TrainHistory",
    "UnderdampedLangevinBlock",
    "fit",
    "mcmc_augment",
    "sanitize_log_weights",
]
