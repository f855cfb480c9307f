"""Per-sample log-determinant of a layer acting on vectors.

For a transform ``f`` with ``y = f(x)`` on inputs of shape ``(..., D)``, :func:`log_abs_det` returns
:math:`\\log\\lvert\\det \\partial y / \\partial x\\rvert` of shape ``(...)``: an elementwise transform
(``event_dim`` 0) returns one term per coordinate, which are summed; a vector transform (``event_dim`` 1)
returns one per sample; a constant (e.g. a permutation's 0) is broadcast.

Example::

    >>> import torch
    >>> from torch.distributions import ExpTransform
    >>> x = torch.zeros(4, 3)
    >>> log_abs_det(ExpTransform(), x, x.exp()).shape
    torch.Size([4])
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Transform


def log_abs_det(layer: Transform, x: Tensor, y: Tensor) -> Tensor:
    """``log|det J|`` of ``layer`` at ``x`` (with ``y = layer(x)``), one value per sample, shape
    ``x.shape[:-1]``."""
    ladj = layer.log_abs_det_jacobian(x, y)
    if layer.domain.event_dim == 0:
        ladj = ladj.sum(-1)
    return ladj.expand(x.shape[:-1]) if ladj.shape != x.shape[:-1] else ladj


__all__ = ["log_abs_det"]
