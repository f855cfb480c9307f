"""One registry of flow builders: a name -> the bijective layers of one flow stage.

Every builder has the signature ``builder(dim, *, hidden_dims=None, num_couplings=..., stage=0)``
and returns a list of Pyro ``TransformModule`` bijections (``[]`` for ``"none"``):

==============  ===================================================================================
``real_nvp``    ``num_couplings`` (default 2) affine couplings, MLP ``hidden_dims`` (default 64-64),
                each followed by a coordinate reversal (the paper's RealNVP block)
``spline``      the same with rational-quadratic spline couplings
``coupling``    ``num_couplings`` (default 1) affine couplings initialised to the identity, each
                followed by a fixed random permutation seeded by ``stage`` (so a rebuilt guide
                matches its saved parameters)
``iaf``         the same with affine autoregressive layers
``affine``      one elementwise :class:`~pyro_snf.transforms.affine.Affine` (initialised to identity)
``none``        no layers
==============  ===================================================================================

For ``dim == 1`` (no coupling or autoregression possible) ``coupling`` and ``iaf`` fall back to
``affine``. :func:`make_flow` also accepts a callable ``dim -> Transform | list[Transform]``. Adding a
flow is one builder function and one line in :data:`FLOWS`.

Example::

    >>> [type(t).__name__ for t in make_flow("coupling", 3, hidden_dims=(8,))]
    ['AffineCoupling', 'Permute']
    >>> [type(t).__name__ for t in make_flow("real_nvp", 2, hidden_dims=(8,), num_couplings=1)]
    ['AffineCoupling', 'Permute']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.distributions import Transform

from pyro_snf.transforms.affine import Affine
from pyro_snf.transforms.coupling import real_nvp_stage, spline_coupling_stage


class FlowBuilder(Protocol):
    def __call__(self, dim: int, *, hidden_dims: Sequence[int] | None = None, num_couplings: int = ...,
                 stage: int = 0) -> list[Transform]: ...


def _real_nvp(dim: int, *, hidden_dims: Sequence[int] | None = None, num_couplings: int = 2,
              stage: int = 0) -> list[Transform]:
    return real_nvp_stage(dim, num_couplings, (64, 64) if hidden_dims is None else hidden_dims)


def _spline(dim: int, *, hidden_dims: Sequence[int] | None = None, num_couplings: int = 2,
            stage: int = 0) -> list[Transform]:
    return spline_coupling_stage(dim, num_couplings, (64, 64) if hidden_dims is None else hidden_dims)


def _zero_last(net: nn.Module) -> None:
    """Zero the output layer of a Pyro DenseNN / AutoRegressiveNN: the layer starts as the identity."""
    nn.init.zeros_(net.layers[-1].weight), nn.init.zeros_(net.layers[-1].bias)


def _identity_init(kind: str) -> FlowBuilder:
    def build(dim: int, *, hidden_dims: Sequence[int] | None = None, num_couplings: int = 1,
              stage: int = 0) -> list[Transform]:
        if dim == 1:
            return _affine(dim)
        hidden = None if hidden_dims is None else list(hidden_dims)
        layers: list[Transform] = []
        for k in range(num_couplings):
            if kind == "coupling":
                layer = T.affine_coupling(dim, hidden_dims=hidden)
                _zero_last(layer.nn)
            else:
                layer = T.affine_autoregressive(dim, hidden_dims=hidden)
                _zero_last(layer.arn)
            seed = 1000 + stage if k == 0 else 1000 + 7919 * (k + 1) + stage
            layers += [layer, T.Permute(torch.randperm(dim, generator=torch.Generator().manual_seed(seed)))]
        return layers

    return build


def _affine(dim: int, *, hidden_dims: Sequence[int] | None = None, num_couplings: int = 1,
            stage: int = 0) -> list[Transform]:
    return [Affine(torch.zeros(dim))]


def _none(dim: int, *, hidden_dims: Sequence[int] | None = None, num_couplings: int = 0,
          stage: int = 0) -> list[Transform]:
    return []


FLOWS: dict[str, FlowBuilder] = {
    "real_nvp": _real_nvp,
    "spline": _spline,
    "coupling": _identity_init("coupling"),
    "iaf": _identity_init("iaf"),
    "affine": _affine,
    "none": _none,
}


def make_flow(flow: str | Callable[[int], Any], dim: int, **options: Any) -> list[Transform]:
    """The layers of one flow stage: ``FLOWS[flow](dim, **options)``, or ``flow(dim)`` for a callable.

    :param flow: a key of :data:`FLOWS` or a callable ``dim -> Transform | list[Transform]``.
    :param options: ``hidden_dims``, ``num_couplings``, ``stage`` (see the module docstring).
    """
    if callable(flow):
        made = flow(dim)
        return list(made) if isinstance(made, (list, tuple)) else [made]
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}: choose one of {sorted(FLOWS)} or pass a callable "
                         "dim -> Transform(s)")
    return FLOWS[flow](dim, **options)
