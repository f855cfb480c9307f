"""Flow layers conditioned on an encoder context, for :class:`~pyro_snf.infer.AmortizedSNF`, and the check
of an encoder's output.

An encoder returns ``(loc, scale)`` or ``(loc, scale, context)``, each with one row per data point
(``context`` of shape ``(B, H)``). :class:`ConditionalFlows` holds ``num_stages x num_flows`` conditional
affine bijections of the whitened coordinates ``w`` (Pyro's ``ConditionalAffineCoupling`` or conditional
IAF ``ConditionalAffineAutoregressive``), each followed by a fixed random permutation. Given data
point ``i``'s context ``h_i`` (the encoder's, or ``(loc_i, log scale_i)`` when it returns none) a layer
is, for a coupling that splits ``w = (w_a, w_b)``,

.. math::

    F(w; h_i) = \\big(w_a,\\; w_b \\odot e^{s(w_a, h_i)} + t(w_a, h_i)\\big), \\qquad
    \\log|\\det J_F| = \\textstyle\\sum_j s_j(w_a, h_i)

(for the IAF ``s_j, t_j`` depend on ``w_{<j}`` and ``h_i``), an exact log-determinant that enters the
path weight like a block's ``dS``. The networks' readout starts at zero (every layer starts as the
identity) and is scaled by ``1 / fan_in`` (as :data:`pyro_snf.transforms.FLOWS`' ``coupling``, ``iaf``).

Example::

    >>> import torch
    >>> flows = ConditionalFlows("coupling", latent_dim=4, context_dim=3, num_stages=2, num_flows=1)
    >>> layers = flows.stage(0, torch.randn(5, 3))  # a coupling and a permutation, for 5 data points
    >>> w = torch.randn(7, 5, 4)                    # 7 particles for each of the 5 points
    >>> y = layers[1](layers[0](w))
    >>> y.shape, bool(torch.allclose(y, w[..., flows.perms[0]]))  # the identity at initialisation
    (torch.Size([7, 5, 4]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import Tensor, nn
from torch.distributions import Transform

from pyro_snf.transforms.registry import _ScaledReadout, _zero_last

#: the conditional flow layers AmortizedSNF builds (``flow=``)
FLOW_KINDS = ("coupling", "iaf")


class ScaledConditionalDenseNN(_ScaledReadout, ConditionalDenseNN):
    """Pyro's ``ConditionalDenseNN`` with its outputs times ``1 / fan_in`` of the readout layer."""


class ScaledConditionalAutoRegressiveNN(_ScaledReadout, ConditionalAutoRegressiveNN):
    """Pyro's ``ConditionalAutoRegressiveNN`` with its outputs times ``1 / fan_in`` of the readout."""


class ConditionalFlows(nn.Module):
    """``num_stages`` stages of ``num_flows`` identity-initialised conditional affine layers (``kind``
    ``"coupling"`` or ``"iaf"``) on ``latent_dim`` coordinates, given a context of ``context_dim``
    features per data point; ``hidden_dims`` defaults to Pyro's widths (``[10 D]`` for a coupling,
    ``[3 D + 1]`` for an IAF)."""

    def __init__(self, kind: str, latent_dim: int, context_dim: int, num_stages: int, num_flows: int,
                 hidden_dims: Sequence[int] | None = None) -> None:
        super().__init__()
        if kind not in FLOW_KINDS:
            raise ValueError(f"flow must be one of {list(FLOW_KINDS)}, got {kind!r}")
        for name, v, low in (("latent_dim", latent_dim, 2), ("context_dim", context_dim, 1),
                             ("num_stages", num_stages, 1), ("num_flows", num_flows, 1)):
            if isinstance(v, bool) or int(v) != v or v < low:
                raise ValueError(f"{name} must be an integer >= {low} for conditional flows, got {v!r}"
                                 + (" (a 1-D latent has no coupling split; use num_flows=0)"
                                    if name == "latent_dim" else ""))
        d, h = int(latent_dim), int(context_dim)
        self.kind, self.latent_dim, self.context_dim = kind, d, h
        self.num_stages, self.num_flows = int(num_stages), int(num_flows)
        self.hidden_dims = list(hidden_dims) if hidden_dims is not None else None
        layers: list[nn.Module] = []
        perms = []
        for k in range(self.num_stages * self.num_flows):
            if kind == "coupling":
                split = d // 2
                net = ScaledConditionalDenseNN(split, h, self.hidden_dims or [10 * d], [d - split] * 2)
                _zero_last(net)
                layers.append(T.ConditionalAffineCoupling(split, net))
            else:
                arn = ScaledConditionalAutoRegressiveNN(d, h, self.hidden_dims or [3 * d + 1])
                _zero_last(arn)
                layers.append(T.ConditionalAffineAutoregressive(arn))
            perms.append(torch.randperm(d, generator=torch.Generator().manual_seed(2024 + k)))
        self.layers = nn.ModuleList(layers)
        self.register_buffer("perms", torch.stack(perms), persistent=False)

    def stage(self, k: int, context: Tensor) -> list[Transform]:
        """The bijections of stage ``k`` given the per-point context (shape ``(B, H)``; it broadcasts
        against ``w`` of shape ``(..., B, D)``).

        :raises TypeError: a context of another dtype than the flows' parameters."""
        dtype = self.layers[0].nn.layers[0].weight.dtype
        if context.dtype != dtype:
            raise TypeError(f"the flows' context is {context.dtype} but their parameters are {dtype}: "
                            f"convert the flows (guide.flows.to({context.dtype})) or the encoder")
        out: list[Transform] = []
        for j in range(k * self.num_flows, (k + 1) * self.num_flows):
            out += [self.layers[j].condition(context), T.Permute(self.perms[j])]
        return out


def check_encoder_output(out: object, size: int, full_size: int, latent_dim: int, indices: Tensor,
                         context_dim: int | None, plate: str, site: str
                         ) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(loc, scale, context)`` from an encoder's output ``(loc, scale)`` or ``(loc, scale, context)``,
    with ``B = size`` rows each (rows for all ``N = full_size`` points of a subsampled plate are reduced
    to the subsample's ``indices``); ``context`` is None for a pair.

    :raises TypeError: not a pair or triple of tensors.
    :raises ValueError: wrong shapes, naming the expected ones.
    """
    if not (isinstance(out, (tuple, list)) and len(out) in (2, 3) and all(torch.is_tensor(t) for t in out)):
        raise TypeError("encoder must return a pair of tensors (loc, scale) or a triple (loc, scale, "
                        f"context), got {type(out).__name__}" + (f" of length {len(out)}" if isinstance(
                            out, (tuple, list)) else ""))
    parts = list(out)
    b, n, d = size, full_size, latent_dim
    if n != b and all(t.dim() == 2 and t.shape[0] == n for t in parts):
        idx = indices.to(parts[0].device)
        parts = [t[idx] for t in parts]
    loc, scale = parts[0], parts[1]
    if loc.shape != (b, d) or scale.shape != (b, d):
        raise ValueError(
            f"encoder returned loc of shape {tuple(loc.shape)} and scale of shape {tuple(scale.shape)}; "
            f"expected (B, D) = ({b}, {d}) each: B = {b} data points of plate {plate!r} in this call"
            + (f" (or ({n}, {d}) for all {n} points, of which the guide takes the subsample)" if n != b
               else "") + f", D = {d} unconstrained coordinates of site {site!r}")
    context = parts[2] if len(parts) == 3 else None
    if context is not None:
        if context_dim is None:
            raise ValueError(f"encoder returned a context of shape {tuple(context.shape)}, but the guide was "
                             f"built with context_dim=None: pass context_dim={context.shape[-1]} (and "
                             "num_flows >= 1) to condition its flows on it, or return (loc, scale)")
        if context.shape != (b, context_dim):
            raise ValueError(f"encoder returned a context of shape {tuple(context.shape)}; expected "
                             f"(B, H) = ({b}, {context_dim}) (H = context_dim of the guide)")
    return loc, scale, context
