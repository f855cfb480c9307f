"""A learnable affine bijection ``y = loc + L x`` (full lower-triangular or diagonal ``L``).

With ``L = diag(exp(s)) + strictly_lower(M)`` (``full=True``) or ``L = diag(exp(s))``:

.. math::

    y = \\mathrm{loc} + L x, \\qquad \\log|\\det J| = \\textstyle\\sum_i s_i .

It is the last layer of :class:`~pyro_snf.infer.AutoSNF` (the map from whitened to unconstrained
coordinates, so that a Gaussian posterior is fitted exactly and its ``L`` preconditions the blocks) and
the ``"affine"`` entry of :data:`pyro_snf.transforms.FLOWS`.

Example::

    >>> import torch
    >>> f = Affine(torch.zeros(3), scale=2.0, full=True)
    >>> x = torch.randn(5, 3)
    >>> y = f(x)
    >>> torch.allclose(f.inv(y), x), f.log_abs_det_jacobian(x, y).shape
    (True, torch.Size([5]))
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import constraints


class Affine(TransformModule):
    """``y = loc + L x``; ``loc`` initialised to ``loc``, ``L`` to ``scale * I``.

    :param loc: initial location, shape ``(D,)`` (its dtype and device are the module's).
    :param scale: initial diagonal scale (> 0).
    :param full: learn the strictly lower triangle of ``L`` too (``D (D - 1) / 2`` more parameters).
    """

    domain = codomain = constraints.real_vector
    bijective = True
    sign = 1

    def __init__(self, loc: Tensor, scale: float = 1.0, full: bool = False) -> None:
        super().__init__(cache_size=0)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(torch.full_like(self.loc, math.log(scale)))
        dim = loc.shape[-1]
        self.tril = nn.Parameter(loc.new_zeros(dim, dim)) if full and dim > 1 else None

    def scale_tril(self) -> Tensor:
        """``L`` as a dense lower-triangular matrix."""
        diag = torch.diag_embed(self.log_scale.exp())
        return diag if self.tril is None else diag + self.tril.tril(-1)

    def _call(self, x: Tensor) -> Tensor:
        y = self.log_scale.exp() * x
        return self.loc + (y if self.tril is None else y + x @ self.tril.tril(-1).T)

    def _inverse(self, y: Tensor) -> Tensor:
        lower = self.scale_tril()
        lower = lower.expand(y.shape[:-1] + lower.shape)
        return torch.linalg.solve_triangular(lower, (y - self.loc).unsqueeze(-1), upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.log_scale.sum().expand(x.shape[:-1])
