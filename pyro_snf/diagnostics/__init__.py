"""Diagnostics for importance sampling: PSIS k-hat and ArviZ conversion (one adapter for ArviZ
0.x and 1.x) and matplotlib plots of weights and marginals. Plots import matplotlib lazily."""

from pyro_snf.diagnostics.arviz_compat import (
    KHAT_THRESHOLD,
    arviz_major_version,
    from_dict,
    khat_verdict,
    psis_khat,
)
from pyro_snf.diagnostics.free_energy import histogram_profile, profile_error
from pyro_snf.diagnostics.plots import WeightedDraws, plot_marginals, plot_weights

__all__ = [
    "KHAT_THRESHOLD",
    "WeightedDraws",
    "arviz_major_version",
    "from_dict",
    "histogram_profile",
    "khat_verdict",
    "plot_marginals",
    "plot_weights",
    "profile_error",
    "psis_khat",
]
