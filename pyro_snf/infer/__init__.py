"""Pyro inference with SNFs: ``sample_posterior`` (one call from a model to a posterior and its
evidence), the ``AutoSNF`` autoguide (global latents), the ``AmortizedSNF`` guide (local latents, VAEs),
the vectorised model potential, and importance sampling with log evidence, ESS and PSIS k-hat."""

from pyro_snf.infer.amortized import AmortizedSNF
from pyro_snf.infer.autoguide import AutoSNF
from pyro_snf.infer.importance import importance_sample
from pyro_snf.infer.posterior import sample_posterior
from pyro_snf.infer.potential import LatentSite, ModelPotential, latent_sites
from pyro_snf.infer.result import ImportanceResult

__all__ = [
    "AmortizedSNF",
    "AutoSNF",
    "ImportanceResult",
    "LatentSite",
    "ModelPotential",
    "importance_sample",
    "latent_sites",
    "sample_posterior",
]
