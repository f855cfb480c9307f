"""Coupling flows on :math:`\\mathbb{R}^a \\times \\mathbb{T}^b`: some coordinates are angles.

A flow on :math:`\\mathbb{R}^D` cannot respect a periodic coordinate: an angle restricted to
:math:`(-\\pi, \\pi]` leaks out of the interval, and every draw that leaks gets importance weight 0 (the
alanine-dipeptide RealNVP put a quarter of its draws there). :class:`CircularCoupling` keeps angles on
the circle exactly. With a binary mask splitting the coordinates into a conditioning part :math:`A` and
a transformed part :math:`B`,

.. math::

    y_i = x_i\\, e^{s_i(h)} + t_i(h) \\quad (i \\in B \\text{ real}), \\qquad
    y_j = \\operatorname{wrap}\\big(g_j(x_j; h) + \\rho_j(h)\\big) \\quad (j \\in B \\text{ periodic}),

with :math:`h = (x_A^{\\rm real}, \\cos x_A^{\\rm per}, \\sin x_A^{\\rm per})` (so the conditioner is
periodic in every angle it reads), :math:`g_j` a monotonic rational-quadratic spline of
:math:`[-\\pi, \\pi]` onto itself with knots and interior derivatives from an MLP and derivative 1 at
both ends (so it is a :math:`C^1` diffeomorphism of the circle fixing :math:`\\pi`), :math:`\\rho_j` a
rotation and :math:`\\operatorname{wrap}(a) = \\pi - ((\\pi - a) \\bmod 2\\pi) \\in (-\\pi, \\pi]`
(Rezende et al. 2020); an angle given outside :math:`(-\\pi, \\pi]` is wrapped first, so the map is
a function on the circle. The rotation has Jacobian 1, so

.. math::

    \\log|\\det J| = \\textstyle\\sum_{i \\in B\\,\\rm real} s_i(h) + \\sum_{j \\in B\\,\\rm per}
    \\log g_j'(x_j; h).

The spline's slopes at :math:`-\\pi` and :math:`\\pi` are one learned value, so the map is :math:`C^1`
across the seam (:func:`circle_spline`). The MLP's readout starts at zero with the slopes offset to 1, so
every coupling starts as the identity. Its base is :class:`~pyro_snf.transforms.torus_base.TorusNormal`
(standard normal on the real coordinates, uniform on the angles), and :func:`circular_stage` builds a
flow stage.

Example::

    >>> import torch
    >>> periodic = torch.tensor([False, True, True, False])
    >>> layer = CircularCoupling(periodic, transformed=torch.tensor([True, True, False, False]),
    ...                          hidden_dims=(8,))
    >>> x = torch.tensor([[0.3, 3.1, -2.0, 1.0]])
    >>> y = layer(x)
    >>> bool(torch.allclose(layer.inv(y.clone()), x, atol=1e-5)), bool((y - x).abs().max() < 1e-5)
    (True, True)

References: D. Rezende et al., Normalizing flows on tori and spheres, ICML 2020; C. Durkan et al.,
Neural spline flows, NeurIPS 2019; L. Dinh et al., Density estimation using Real NVP, ICLR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import constraints

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(_DERIVATIVE_OFFSET) + MIN_DERIVATIVE = 1: every knot starts with slope 1 (the identity)
_DERIVATIVE_OFFSET = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def wrap(a: Tensor) -> Tensor:
    """``a`` modulo ``2 pi`` in ``(-pi, pi]`` (``-pi`` only by rounding)."""
    return math.pi - torch.remainder(math.pi - a, 2 * math.pi)


def _knots(fractions: Tensor) -> Tensor:
    """Knot positions on ``[-pi, pi]`` from bin fractions summing to 1 (ends exact)."""
    cum = F.pad(torch.cumsum(fractions, -1), (1, 0))
    knots = (2 * cum - 1) * math.pi
    return torch.cat([torch.full_like(knots[..., :1], -math.pi), knots[..., 1:-1],
                      torch.full_like(knots[..., :1], math.pi)], -1)


def _clamp01(xi: Tensor) -> Tensor:
    """``xi`` clamped to ``[0, 1]`` (rounding at a knot or an end) with the unclamped gradient."""
    return xi - (xi - xi.clamp(0, 1)).detach()


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(t, -1, idx).squeeze(-1)


def circle_spline(a: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor,
                  inverse: bool = False) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline of ``[-pi, pi]`` onto itself (Durkan et al. 2019) and
    ``log g'`` (of the map applied: the inverse's for ``inverse=True``).

    :param a: points in ``[-pi, pi]``, shape ``(..., n)``.
    :param widths, heights: bin fractions (positive, summing to 1), shape ``(..., n, K)``.
    :param derivatives: slopes at the ``K + 1`` knots, shape ``(..., n, K + 1)``; equal first and last
        slopes make the map :math:`C^1` on the circle.

    The bin is found by ``torch.searchsorted`` on the knots, the local coordinate clamped to
    ``[0, 1]`` and the inverse's discriminant to ``>= 0``, so rounding at a knot cannot fail.
    """
    xk, yk = _knots(widths), _knots(heights)
    k = widths.shape[-1]
    search = yk if inverse else xk
    idx = torch.searchsorted(search[..., 1:-1].contiguous(), a.unsqueeze(-1).contiguous(), right=True)
    idx = idx.clamp(0, k - 1)
    x0, y0 = _gather(xk, idx), _gather(yk, idx)
    w, h = _gather(xk, idx + 1) - x0, _gather(yk, idx + 1) - y0
    d0, d1 = _gather(derivatives, idx), _gather(derivatives, idx + 1)
    s = h / w
    if inverse:
        dy = a - y0
        c2 = d1 + d0 - 2 * s
        qa = h * (s - d0) + dy * c2
        qb = h * d0 - dy * c2
        qc = -s * dy
        root = torch.sqrt((qb.square() - 4 * qa * qc).clamp_min(0))
        xi = _clamp01(2 * qc / (-qb - root))
    else:
        xi = _clamp01((a - x0) / w)
    om = xi * (1 - xi)
    denom = s + (d1 + d0 - 2 * s) * om
    log_grad = (2 * torch.log(s) + torch.log(d1 * xi.square() + 2 * s * om + d0 * (1 - xi).square())
                - 2 * torch.log(denom))
    if inverse:
        return x0 + xi * w, -log_grad
    return y0 + h * (s * xi.square() + d0 * om) / denom, log_grad


def _mask(value, dim: int, name: str) -> Tensor:
    mask = torch.as_tensor(value)
    if mask.dtype != torch.bool:
        index = mask.long().reshape(-1)
        if index.numel() and (index.min() < 0 or index.max() >= dim):
            raise ValueError(f"{name} indices must lie in [0, {dim}), got {index.tolist()}")
        mask = torch.zeros(dim, dtype=torch.bool)
        mask[index] = True
    if mask.shape != (dim,):
        raise ValueError(f"{name} must be a boolean mask of shape ({dim},) or indices, got shape "
                         f"{tuple(mask.shape)}")
    return mask


class CircularCoupling(TransformModule):
    """One coupling on real and periodic coordinates (module doc).

    :param periodic: boolean mask (shape ``(D,)``) or indices of the angle coordinates, in radians on
        ``(-pi, pi]``.
    :param transformed: boolean mask or indices of the coordinates this coupling changes (``B``); the
        others (``A``) condition the MLP. Both parts must be non-empty.
    :param hidden_dims: MLP hidden widths (ReLU).
    :param count_bins: spline bins per angle.
    :param log_scale_clip: clamp of the real coordinates' log-scale ``s`` (Pyro's ``AffineCoupling``
        default ``(-5, 3)``).
    """

    domain = codomain = constraints.real_vector
    bijective = True

    def __init__(self, periodic, transformed, hidden_dims: Sequence[int] = (64, 64), count_bins: int = 8,
                 log_scale_clip: tuple[float, float] = (-5.0, 3.0)) -> None:
        super().__init__(cache_size=1)
        periodic = torch.as_tensor(periodic)
        dim = int(periodic.numel()) if periodic.dtype == torch.bool else None
        if dim is None:
            raise ValueError("periodic must be a boolean mask of shape (D,) (it fixes D)")
        periodic = _mask(periodic, dim, "periodic")
        transformed = _mask(transformed, dim, "transformed")
        if not transformed.any() or transformed.all():
            raise ValueError("transformed must select some but not all coordinates (a coupling needs a "
                             "conditioning part and a transformed part)")
        if count_bins < 2:
            raise ValueError(f"count_bins must be >= 2, got {count_bins}")
        self.dim, self.count_bins, self.log_scale_clip = dim, int(count_bins), log_scale_clip
        for name, m in {"cond_real": ~transformed & ~periodic, "cond_per": ~transformed & periodic,
                        "tr_real": transformed & ~periodic, "tr_per": transformed & periodic}.items():
            self.register_buffer(name, torch.nonzero(m).reshape(-1))
        self.register_buffer("periodic", periodic)
        self.register_buffer("transformed", transformed)
        n_in = len(self.cond_real) + 2 * len(self.cond_per)
        self.n_out = 2 * len(self.tr_real) + (3 * self.count_bins + 1) * len(self.tr_per)
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        readout = nn.Linear(n_in, self.n_out)
        nn.init.zeros_(readout.weight)
        nn.init.zeros_(readout.bias)
        self.net = nn.Sequential(*layers, readout)
        self._cached_log_det: Tensor | None = None

    def _params(self, x: Tensor):
        h = torch.cat([x[..., self.cond_real], torch.cos(x[..., self.cond_per]),
                       torch.sin(x[..., self.cond_per])], dim=-1)
        out = self.net(h)
        n_real, k = len(self.tr_real), self.count_bins
        shift, raw_scale = out[..., :n_real], out[..., n_real:2 * n_real]
        log_scale = raw_scale.clamp(*self.log_scale_clip)
        spline = out[..., 2 * n_real:].reshape(*out.shape[:-1], len(self.tr_per), 3 * k + 1)
        widths = MIN_BIN + (1 - MIN_BIN * k) * F.softmax(spline[..., :k], dim=-1)
        heights = MIN_BIN + (1 - MIN_BIN * k) * F.softmax(spline[..., k:2 * k], dim=-1)
        slopes = MIN_DERIVATIVE + F.softplus(spline[..., 2 * k:3 * k] + _DERIVATIVE_OFFSET)
        derivatives = torch.cat([slopes, slopes[..., :1]], -1)  # slopes at the K + 1 knots; ends tied
        rotation = spline[..., -1]
        return shift, log_scale, (widths, heights, derivatives), rotation

    def _spline(self, a: Tensor, knots, inverse: bool) -> tuple[Tensor, Tensor]:
        return circle_spline(a, *knots, inverse=inverse)

    def _call(self, x: Tensor) -> Tensor:
        shift, log_scale, knots, rotation = self._params(x)
        y = x.clone()
        y[..., self.tr_real] = x[..., self.tr_real] * torch.exp(log_scale) + shift
        g, log_g = self._spline(wrap(x[..., self.tr_per]), knots, inverse=False)
        y[..., self.tr_per] = wrap(g + rotation)
        self._cached_log_det = log_scale.sum(-1) + log_g.sum(-1)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        shift, log_scale, knots, rotation = self._params(y)  # A is unchanged: y_A = x_A
        x = y.clone()
        x[..., self.tr_real] = (y[..., self.tr_real] - shift) * torch.exp(-log_scale)
        a, log_g_inv = self._spline(wrap(y[..., self.tr_per] - rotation), knots, inverse=True)
        x[..., self.tr_per] = a
        self._cached_log_det = log_scale.sum(-1) - log_g_inv.sum(-1)  # log|det| of the forward map
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        cached_x, cached_y = self._cached_x_y
        if self._cached_log_det is None or not (x is cached_x and y is cached_y):
            self(x)
        return self._cached_log_det

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, transformed={int(self.transformed.sum())}, "
                f"periodic={int(self.periodic.sum())}, count_bins={self.count_bins}")


def circular_stage(periodic, num_couplings: int = 2, hidden_dims: Sequence[int] = (64, 64),
                   count_bins: int = 8, stage: int = 0) -> list[CircularCoupling]:
    """``num_couplings`` couplings on a random half of the coordinates and its complement in turn (the
    half is drawn from a generator seeded by ``stage``, so a rebuilt model matches saved parameters).

    Example::

        >>> import torch
        >>> [layer.extra_repr() for layer in circular_stage(torch.tensor([True, False, True]), 2,
        ...                                                    hidden_dims=(4,))]
        ['dim=3, transformed=1, periodic=2, count_bins=8', 'dim=3, transformed=2, periodic=2, count_bins=8']
    """
    periodic = torch.as_tensor(periodic, dtype=torch.bool)
    dim = int(periodic.numel())
    if dim < 2:
        raise ValueError(f"a coupling needs at least 2 coordinates, got {dim}")
    order = torch.randperm(dim, generator=torch.Generator().manual_seed(int(stage)))
    half = torch.zeros(dim, dtype=torch.bool)
    half[order[: dim // 2]] = True
    return [CircularCoupling(periodic, half if i % 2 == 0 else ~half, hidden_dims, count_bins)
            for i in range(num_couplings)]


__all__ = ["CircularCoupling", "circle_spline", "circular_stage", "wrap"]
