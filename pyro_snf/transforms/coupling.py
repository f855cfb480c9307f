"""Coupling-flow builders on top of Pyro's ``TransformModule`` bijections.

A flow *stage* is the group of bijections between two stochastic blocks (``real_nvp_stage``:
``num_couplings`` couplings, each followed by a coordinate reversal)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pyro.distributions.transforms as T
import torch
from torch.distributions import Transform


def reverse_permutation(input_dim: int) -> T.Permute:
    """``Permute`` that reverses the coordinates, so the next coupling conditions on the other half."""
    return T.Permute(torch.arange(input_dim - 1, -1, -1))


def _check(input_dim: int, num_couplings: int) -> None:
    if input_dim < 2:
        raise ValueError(f"coupling layers need input_dim >= 2, got {input_dim}")
    if num_couplings < 1:
        raise ValueError(f"num_couplings must be >= 1, got {num_couplings}")


def real_nvp_stage(input_dim: int, num_couplings: int = 2,
                   hidden_dims: Sequence[int] = (64, 64), **kwargs) -> list[Transform]:
    """``num_couplings`` RealNVP affine couplings, each followed by a coordinate reversal.

    Each coupling ``y_B = x_B * exp(s(x_A)) + t(x_A)`` (Pyro's :class:`~pyro.distributions.
    transforms.AffineCoupling`, ``log|det J| = sum s``) conditions one half on the other; the
    reversal alternates the halves. ``kwargs`` go to :func:`pyro.distributions.transforms.
    affine_coupling` (e.g. ``log_scale_min_clip``).

    Example::

        >>> layers = real_nvp_stage(2, num_couplings=2, hidden_dims=(16, 16))
        >>> [type(t).__name__ for t in layers]
        ['AffineCoupling', 'Permute', 'AffineCoupling', 'Permute']
    """
    _check(input_dim, num_couplings)
    layers: list[Transform] = []
    for _ in range(num_couplings):
        layers.append(T.affine_coupling(input_dim, hidden_dims=list(hidden_dims), **kwargs))
        layers.append(reverse_permutation(input_dim))
    return layers


def spline_coupling_stage(input_dim: int, num_couplings: int = 2, hidden_dims: Sequence[int] = (64, 64),
                          count_bins: int = 8, bound: float = 3.0) -> list[Transform]:
    """Rational-quadratic spline couplings (Pyro's ``SplineCoupling``), each followed by a reversal.

    The spline acts on ``[-bound, bound]`` and is the identity outside.

    Example::

        >>> layers = spline_coupling_stage(4, num_couplings=1, hidden_dims=(8,))
        >>> [type(t).__name__ for t in layers]
        ['SplineCoupling', 'Permute']
    """
    _check(input_dim, num_couplings)
    layers: list[Transform] = []
    for _ in range(num_couplings):
        layers.append(T.spline_coupling(input_dim, hidden_dims=list(hidden_dims), count_bins=count_bins,
                                        bound=bound))
        layers.append(reverse_permutation(input_dim))
    return layers


def real_nvp(input_dim: int, num_stages: int = 3, num_couplings: int = 2,
             hidden_dims: Sequence[int] = (64, 64), **kwargs) -> list[Transform]:
    """A RealNVP flow: ``num_stages`` stages of :func:`real_nvp_stage`, flattened into one list."""
    if "num_blocks" in kwargs:
        warnings.warn("real_nvp(num_blocks=) is now num_stages=", DeprecationWarning, stacklevel=2)
        num_stages = kwargs.pop("num_blocks")
    return [t for _ in range(num_stages) for t in real_nvp_stage(input_dim, num_couplings, hidden_dims,
                                                                   **kwargs)]


def real_nvp_block(*args, **kwargs) -> list[Transform]:
    """Deprecated name of :func:`real_nvp_stage` ("block" now means a stochastic block)."""
    warnings.warn("real_nvp_block is now real_nvp_stage", DeprecationWarning, stacklevel=2)
    return real_nvp_stage(*args, **kwargs)


def spline_coupling_block(*args, **kwargs) -> list[Transform]:
    """Deprecated name of :func:`spline_coupling_stage` ("block" now means a stochastic block)."""
    warnings.warn("spline_coupling_block is now spline_coupling_stage", DeprecationWarning, stacklevel=2)
    return spline_coupling_stage(*args, **kwargs)
