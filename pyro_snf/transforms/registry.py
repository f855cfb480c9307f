"""One registry of flow builders: a name -> the bijective layers of one flow stage.

Every builder has the signature ``builder(dim, *, hidden_dims=None, num_couplings=..., stage=0)``
and returns a list of Pyro ``TransformModule`` bijections (``[]`` for ``"none"``):

==============  ===================================================================================
``real_nvp``    ``num_couplings`` (default 2) affine couplings, MLP ``hidden_dims`` (default 64-64),
                each followed by a coordinate reversal (the paper's RealNVP block)
``spline``      the same with rational-quadratic spline couplings
``coupling``    ``num_couplings`` (default 1) affine couplings initialised to the identity, each
                followed by a fixed random permutation seeded by ``stage`` (so a rebuilt guide
                matches its saved parameters); their networks' readout is scaled by ``1 / fan_in``
``iaf``         the same with affine autoregressive layers
``affine``      one elementwise :class:`~pyro_snf.transforms.affine.Affine` (initialised to identity)
``none``        no layers
==============  ===================================================================================

``coupling`` and ``iaf`` start as the identity (zero readout layer) and multiply the network outputs
(shift and log-scale) by ``1 / fan_in`` of the readout layer (:class:`ScaledDenseNN`,
:class:`ScaledAutoRegressiveNN`; mean-field readout). Adam moves every readout weight by about ``lr``
per step, all in one direction (the gradient ``delta_i h_j`` has the sign of ``delta_i`` for ReLU
units ``h_j >= 0``), so an unscaled readout moves an output by ``lr * sum_j h_j``: about 2 per step
for 100 hidden units at ``lr = 0.05``, and stacked stages multiplied the particles' magnitude until
the model overflowed (eight schools: NaN within 3 steps). Scaled, a step moves it by about
``lr * mean_j h_j``, as it moves the affine map's own parameters. The layers are exact bijections
either way (Pyro's ``AffineCoupling`` / ``AffineAutoregressive`` with their log-scale clip).

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
from pyro.nn import AutoRegressiveNN, DenseNN
from torch import Tensor, nn
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


class _ScaledReadout:
    """Mixin for Pyro's ``DenseNN`` / ``AutoRegressiveNN``: every output times ``readout_scale``
    (default ``1 / fan_in`` of the readout layer)."""

    def __init__(self, *args: Any, readout_scale: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fan_in = self.layers[-1].in_features  # type: ignore[attr-defined]
        self.readout_scale = 1.0 / fan_in if readout_scale is None else float(readout_scale)

    def _forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = super()._forward(x)  # type: ignore[misc]
        if isinstance(out, (tuple, list)):
            return tuple(self.readout_scale * o for o in out)
        return self.readout_scale * out


class ScaledDenseNN(_ScaledReadout, DenseNN):
    """Pyro's ``DenseNN`` with its outputs times ``readout_scale`` (default ``1 / fan_in`` of the readout
    layer): one Adam step of size ``lr`` then moves an output by about ``lr * mean_j h_j``."""


class ScaledAutoRegressiveNN(_ScaledReadout, AutoRegressiveNN):
    """Pyro's ``AutoRegressiveNN`` with its outputs times ``readout_scale`` (as :class:`ScaledDenseNN`)."""


def _zero_last(net: nn.Module) -> None:
    """Zero the output layer of a Pyro DenseNN / AutoRegressiveNN: the layer starts as the identity."""
    nn.init.zeros_(net.layers[-1].weight), nn.init.zeros_(net.layers[-1].bias)


def _identity_layer(kind: str, dim: int, hidden_dims: list[int] | None) -> Transform:
    """One identity-initialised affine coupling (``kind="coupling"``) or IAF layer with a scaled readout
    (the networks Pyro's ``affine_coupling`` / ``affine_autoregressive`` build, same default widths)."""
    if kind == "coupling":
        split = dim // 2
        net = ScaledDenseNN(split, [10 * dim] if hidden_dims is None else hidden_dims, [dim - split] * 2)
        _zero_last(net)
        return T.AffineCoupling(split, net)
    arn = ScaledAutoRegressiveNN(dim, [3 * dim + 1] if hidden_dims is None else hidden_dims)
    _zero_last(arn)
    return T.AffineAutoregressive(arn)


def _identity_init(kind: str) -> FlowBuilder:
    def build(dim: int, *, hidden_dims: Sequence[int] | None = None, num_couplings: int = 1,
              stage: int = 0) -> list[Transform]:
        if dim == 1:
            return _affine(dim)
        hidden = None if hidden_dims is None else list(hidden_dims)
        layers: list[Transform] = []
        for k in range(num_couplings):
            layer = _identity_layer(kind, dim, hidden)
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
