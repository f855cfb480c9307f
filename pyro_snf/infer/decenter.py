"""Non-centring a Pyro model's latent Normal sites, for :func:`~pyro_snf.infer.sample_posterior`.

A centred hierarchical site ``theta ~ N(mu, tau)`` makes a funnel: as ``tau -> 0`` the density of
``theta`` near ``mu`` grows without bound, the joint MAP collapses onto ``tau = 0`` and a Laplace
start is useless. Non-centring samples ``theta_decentered ~ N(0, 1)`` and sets
``theta = mu + tau * theta_decentered`` (Pyro's ``LocScaleReparam(centered=0)``): the same model (the
marginal of the data and of every original site is unchanged, so is the evidence), with a posterior
that is close to Gaussian when the data say little about each ``theta``.

:func:`decentered` applies it to every latent site whose distribution is a ``Normal`` (possibly inside
``Independent``) and marks each original site as a ``pyro.deterministic``-like site, so importance
sampling returns its draws under its own name next to ``<name>_decentered``.

Example::

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro import poutine
    >>> def model():
    ...     tau = pyro.sample("tau", dist.HalfNormal(1.0))
    ...     pyro.sample("theta", dist.Normal(0.0, tau))
    >>> tr = poutine.trace(decentered(model)).get_trace()
    >>> [n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
    ['tau', 'theta_decentered']
    >>> tr.nodes["theta"]["infer"]["_deterministic"]
    True

References: O. Papaspiliopoulos, G. O. Roberts, M. Sköld, A general framework for the parametrization
of hierarchical models, Statistical Science 22 (2007); M. Gorinova, D. Moore, M. Hoffman, Automatic
reparameterisation of probabilistic programs, ICML 2020 (Pyro's ``LocScaleReparam``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam
from pyro.poutine.messenger import Messenger

__all__ = ["decentered", "decenter_config", "normal_sites"]

SUFFIX = "_decentered"


def decenter_config(msg: dict) -> LocScaleReparam | None:
    """``poutine.reparam`` config: ``LocScaleReparam(centered=0)`` for latent Normal sites."""
    fn = msg["fn"]
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    fresh = not msg["is_observed"] and not msg["name"].endswith(SUFFIX)  # not its own output
    return LocScaleReparam(centered=0.0) if fresh and type(fn) is dist.Normal else None


class _MarkDeterministic(Messenger):
    """Marks each site that the inner ``poutine.reparam`` replaced by ``<name>_decentered``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample":
            return
        if msg["name"].endswith(SUFFIX):
            self.seen.add(msg["name"][: -len(SUFFIX)])
        elif msg["name"] in self.seen and msg["is_observed"]:
            msg["infer"] = {**msg["infer"], "_deterministic": True}


def decentered(model: Callable[..., Any]) -> Callable[..., Any]:
    """``model`` with every latent Normal site non-centred (see the module docstring)."""
    inner = poutine.reparam(model, config=decenter_config)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _MarkDeterministic():
            return inner(*args, **kwargs)

    return wrapped


def normal_sites(trace: Any) -> list[str]:
    """The latent sites of a trace that :func:`decentered` would non-centre."""
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and decenter_config(site) is not None]
