"""Running a chain of layers forward (sampling) or backward (from target samples).

A layer is either a :class:`~pyro_snf.blocks.base.StochasticBlock` or any
:class:`torch.distributions.Transform` (a Pyro ``TransformModule`` included) whose domain has
event dimension 0 or 1. For a bijection ``f`` the path term is ``log|det J_f|``; for a block it is
the block's ``dS``. Both directions return the per-particle sum of path terms for the pairs
``(y_t, y_{t+1})`` in the forward orientation, so that

- forward: ``log q_path = log q_0(z) - sum dS`` and ``log w = -u(x) - log q_path``;
- backward: ``J_ML(x) = -log q_0(z) + sum dS`` bounds ``-log q_X(x)`` from above.

Layers are never re-run: each is called once per particle batch (value and path term together).
A block's backward move is a forward run of its own kernel (the blocks' backward kernel is their
forward kernel, ``qhat = q``), whose path term changes sign.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Transform

from pyro_snf.blocks.base import BlockInfo, StochasticBlock
from pyro_snf.energy import Potential
from pyro_snf.transforms.jacobian import log_abs_det

Layer = Transform


def check_layers(layers: Sequence[Layer]) -> list[Layer]:
    """Validate a layer list; return it as a list."""
    layers = list(layers)
    for i, layer in enumerate(layers):
        if isinstance(layer, StochasticBlock):
            continue
        if not isinstance(layer, Transform):
            raise TypeError(
                f"layer {i} is a {type(layer).__name__}; layers must be torch Transforms / Pyro "
                "TransformModules or pyro_snf stochastic blocks"
            )
        if layer.domain.event_dim > 1 or layer.codomain.event_dim > 1:
            raise ValueError(
                f"layer {i} ({type(layer).__name__}) acts on event_dim {layer.domain.event_dim}; "
                "SNF layers act on vectors (event_dim 0 or 1)"
            )
    return layers


def _check_shape(i: int, layer: Layer, before: Tensor, after: Tensor) -> None:
    if after.shape != before.shape:
        raise ValueError(
            f"layer {i} ({type(layer).__name__}) changed the shape from {tuple(before.shape)} to "
            f"{tuple(after.shape)}; SNF layers must keep the event shape"
        )


def forward_path(
    layers: Sequence[Layer], z: Tensor, potential: Potential, base_potential: Potential | None,
    states: list[Tensor] | None = None, infos: list[BlockInfo] | None = None,
) -> tuple[Tensor, Tensor]:
    """Push base samples ``z`` through the layers; return ``(x, sum_t dS_t)``.

    If ``states`` is a list, the state after every layer is appended to it (``z`` first); if
    ``infos`` is a list, every block's :class:`~pyro_snf.blocks.BlockInfo` of this run is appended
    to it, in layer order.
    """
    y = z
    if states is not None:
        states.append(z)
    total = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for i, layer in enumerate(layers):
        if isinstance(layer, StochasticBlock):
            y_next, dS, info = layer.step(y, potential, base_potential)
            if infos is not None:
                infos.append(info)
        else:
            y_next = layer(y)
            _check_shape(i, layer, y, y_next)
            dS = log_abs_det(layer, y, y_next)
        total = total + dS
        y = y_next
        if states is not None:
            states.append(y)
    return y, total


def backward_path(
    layers: Sequence[Layer], x: Tensor, potential: Potential, base_potential: Potential | None,
    infos: list[BlockInfo] | None = None,
) -> tuple[Tensor, Tensor]:
    """Pull target samples ``x`` back to the base; return ``(z, sum_t dS_t)``.

    Bijections are inverted; stochastic blocks draw backward moves. If ``infos`` is a list, every
    block's :class:`~pyro_snf.blocks.BlockInfo` of this run is appended to it, in layer order.
    """
    y = x
    total = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    run_infos: list[BlockInfo] = []
    for i, layer in reversed(list(enumerate(layers))):
        if isinstance(layer, StochasticBlock):
            y_prev, dS_run, info = layer.step(y, potential, base_potential)  # qhat = q: a forward run
            dS = -dS_run
            run_infos.append(info)
        else:
            y_prev = layer.inv(y)
            _check_shape(i, layer, y, y_prev)
            dS = log_abs_det(layer, y_prev, y)
        total = total + dS
        y = y_prev
    if infos is not None:
        infos.extend(reversed(run_infos))
    return y, total
