"""Diagnostics for importance sampling: PSIS k-hat and ArviZ conversion (one adapter for ArviZ
0.x and 1.x) and matplotlib plots of weights and marginals. Plots import matplotlib lazily."""

from pyro_snf.diagnostics.arviz_compat import (
    KHAT_THRESHOLD,
    arviz_major_version,
    from_dict,
    khat_verdict,
    psis_khat,
)
from pyro_snf.diagnostics.plots import plot_marginals, plot_weights

__all__ = [
    "KHAT_THRESHOLD",
    "arviz_major_version",
    "from_dict",
    "khat_verdict",
    "plot_marginals",
    "plot_weights",
    "psis_khat",
]
