"""Benchmark energies with known ``log Z`` and exact samplers where they exist."""

from pyro_snf.targets.base import Target
from pyro_snf.targets.double_well import LEFT_WELL_MASS, DoubleWell, ManyWell
from pyro_snf.targets.funnel import NealFunnel
from pyro_snf.targets.gmm import GMM40, GaussianMixture, gmm40_means
from pyro_snf.targets.image import ImageDensity, SNFLetters

__all__ = [
    "GMM40",
    "LEFT_WELL_MASS",
    "DoubleWell",
    "GaussianMixture",
    "ImageDensity",
    "ManyWell",
    "NealFunnel",
    "SNFLetters",
    "Target",
    "gmm40_means",
]
