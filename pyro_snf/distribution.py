"""The SNF as a Pyro distribution whose ``log_prob`` is the path log-density.

For a base sample ``z ~ q_0`` pushed through layers ``y_0 = z -> y_1 -> ... -> y_T = x``:

.. math::

    \\log q_{\\rm path}(x) = \\log q_0(z) - \\sum_t \\Delta S_t, \\qquad
    \\log w = -u(x) - \\log q_{\\rm path}(x), \\qquad \\mathbb E[w] = Z .

So ``E[-u(x) - log_prob(x)]`` is the path-space ELBO and ``u(x) + log_prob(x)`` the per-sample
reverse-KL loss. ``rsample`` attaches the path log-density to the tensor it returns
(``log_prob`` of that very tensor returns it, with gradients), which survives ``expand()`` and
Pyro's particle plates; for a tensor it did not produce, ``log_prob`` is the exact density when
every layer is a bijection and a clear error otherwise.

Example::

    >>> import torch, pyro.distributions as dist, pyro.distributions.transforms as T
    >>> from pyro_snf import StochasticNormalizingFlow, MetropolisBlock
    >>> u = lambda x: 0.5 * ((x - 1.0) ** 2).sum(-1)          # log Z = log(2 pi)
    >>> base = dist.Normal(torch.zeros(2), 2.0).to_event(1)
    >>> snf = StochasticNormalizingFlow(base, [T.affine_coupling(2), MetropolisBlock(0.5, 10)], u)
    >>> x, log_w = snf.sample_and_log_weight((1000,))
    >>> x.shape, log_w.shape
    (torch.Size([1000, 2]), torch.Size([1000]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import Independent, Normal, constraints

from pyro_snf.blocks.base import BlockInfo, StochasticBlock
from pyro_snf.energy import Potential, check_energy
from pyro_snf.path import Layer, backward_path, check_layers, forward_path
from pyro_snf.weights import ImportanceWeights, sanitize_log_weights

_ATTR = "_pyro_snf_path"
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class _FlowToken:
    """Identity of a flow and of its expanded copies (its samples carry it), holding the block
    statistics of their most recent run."""

    __slots__ = ("infos",)

    def __init__(self) -> None:
        self.infos: list[BlockInfo] | None = None


def base_energy(base_dist: TorchDistribution, y: Tensor) -> Tensor:
    """``-base_dist.log_prob(y)``, ``+inf`` (never NaN, never a validation error) where ``y`` is not
    finite. A diagonal Normal base (``Normal(...).to_event(1)``) is evaluated in closed form,
    skipping the distribution's argument validation: blocks call this at every step."""
    inner = base_dist.base_dist if isinstance(base_dist, Independent) else None
    if (isinstance(inner, Normal) and base_dist.reinterpreted_batch_ndims == 1
            and inner.loc.shape[-1:] == base_dist.event_shape):
        loc, scale = inner.loc, inner.scale
        u = 0.5 * ((y - loc) / scale).pow(2).sum(-1) + (scale.log().sum(-1) + y.shape[-1] * _HALF_LOG_2PI)
        return torch.where(u == u, u, torch.full_like(u, float("inf")))  # NaN (diverged y) -> +inf
    ok = torch.isfinite(y).all(-1)
    u = -base_dist.log_prob(torch.where(ok.unsqueeze(-1), y, torch.zeros_like(y)))
    return torch.where(ok, u, torch.full_like(u, float("inf")))


class StochasticNormalizingFlow(TorchDistribution):
    """A chain of bijections and stochastic blocks on top of a base distribution.

    :param base_dist: a distribution with event shape ``(D,)`` and ``rsample``.
    :param layers: torch ``Transform`` / Pyro ``TransformModule`` objects and stochastic blocks.
    :param potential: the target energy ``u`` (``(..., D) -> (...)``), required when there are
        stochastic blocks; blocks with ``beta < 1`` anneal from ``u_0 = -base_dist.log_prob``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        base_dist: TorchDistribution,
        layers: Sequence[Layer],
        potential: Potential | None = None,
        validate_args: bool | None = None,
        *,
        _token: object | None = None,
    ) -> None:
        if len(base_dist.event_shape) != 1:
            raise ValueError(
                f"base_dist must have event shape (D,), got {tuple(base_dist.event_shape)}; "
                "use .to_event(1) on a batched univariate distribution"
            )
        if not base_dist.has_rsample:
            raise ValueError("base_dist must support rsample (reparameterised sampling)")
        self.base_dist = base_dist
        self.layers = check_layers(layers)
        self.has_blocks = any(isinstance(layer, StochasticBlock) for layer in self.layers)
        if self.has_blocks and potential is None:
            raise ValueError("layers contain stochastic blocks: pass potential= (the target energy u)")
        self.potential = potential
        self._token = _FlowToken() if _token is None else _token
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=validate_args)

    # -- modules -------------------------------------------------------------------------------
    @property
    def module(self) -> nn.ModuleList:
        """The layers that are ``nn.Module`` objects, e.g. for ``pyro.module("snf", snf.module)``."""
        return nn.ModuleList([layer for layer in self.layers if isinstance(layer, nn.Module)])

    def parameters(self):
        """Trainable parameters of all layers (not of the base distribution)."""
        return self.module.parameters()

    @property
    def blocks(self) -> list[StochasticBlock]:
        return [layer for layer in self.layers if isinstance(layer, StochasticBlock)]

    @property
    def info(self) -> list[BlockInfo | None]:
        """Per-block statistics of this flow's most recent run (a draw or :meth:`backward_path`;
        expanded copies, e.g. inside Pyro plates, share them), in layer order: one entry per
        block, None before any run. Other flows sharing a block do not change them."""
        infos = self._token.infos
        return [None] * len(self.blocks) if infos is None else list(infos)

    def base_potential(self, y: Tensor) -> Tensor:
        """``u_0(y) = -log q_0(y)``, the energy that blocks with ``beta < 1`` anneal from.

        ``+inf`` at non-finite points (a diverged proposal), which blocks then reject, instead of
        the base distribution's validation error.
        """
        return base_energy(self.base_dist, y)

    def _target(self, y: Tensor) -> Tensor:
        return check_energy(self.potential(y), y)

    # -- sampling --------------------------------------------------------------------------------
    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self._draw(torch.Size(sample_shape))

    def _draw(self, sample_shape: torch.Size, states: list[Tensor] | None = None) -> Tensor:
        _check_sample_shape(sample_shape, self.batch_shape)
        z = self.base_dist.rsample(sample_shape)
        infos: list[BlockInfo] = []
        x, sum_dS = forward_path(self.layers, z, self._target, self.base_potential, states, infos)
        self._token.infos = infos
        log_q = self.base_dist.log_prob(z) - sum_dS
        setattr(x, _ATTR, (self._token, log_q))
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        record = getattr(value, _ATTR, None)
        if record is not None and record[0] is self._token:
            return record[1]
        if not self.has_blocks:
            z, sum_dS = backward_path(self.layers, value, self._target, self.base_potential)
            return self.base_dist.log_prob(z) - sum_dS
        raise ValueError(
            "StochasticNormalizingFlow.log_prob(x) is the path log-density of a sample this flow drew "
            "(the very tensor returned by sample/rsample). This tensor was not produced by it (or was "
            "copied, reshaped or detached since), and an SNF with stochastic blocks has no tractable "
            "marginal density. Score samples as they are drawn, or use backward_path(x) for the "
            "maximum-likelihood bound."
        )

    def log_weight(self, x: Tensor, warn: bool = True) -> Tensor:
        """Importance log-weights ``-u(x) - log_prob(x)`` against ``exp(-u)``; NaN-free."""
        if self.potential is None:
            raise ValueError("log weights need the target energy: construct the flow with potential=")
        return sanitize_log_weights(-self._target(x) - self.log_prob(x), warn=warn, stacklevel=3)

    def sample_and_log_weight(self, sample_shape: torch.Size | tuple = torch.Size()) -> tuple[Tensor, Tensor]:
        """Draw samples (no gradients) and their importance log-weights against ``exp(-u)``.

        ``logmeanexp(log_w)`` estimates ``log Z``; see :class:`~pyro_snf.weights.ImportanceWeights`.
        Particles with non-finite energies get log-weight ``-inf`` and a warning says how many.
        A ``sample_shape`` with a dimension < 1 (no samples) raises a ``ValueError``.
        """
        with torch.no_grad():
            x = self.rsample(torch.Size(sample_shape))
            return x, self.log_weight(x)

    def sample_trajectory(
        self, sample_shape: torch.Size | tuple = torch.Size()
    ) -> tuple[list[Tensor], Tensor]:
        """Draw samples (no gradients) and keep the state after every layer.

        Returns ``(states, log_w)``: ``states[0]`` is the base draw ``z``, ``states[t]`` the state
        after layer ``t`` (``len(self.layers) + 1`` tensors, the last the sample ``x``), and ``log_w``
        the importance log-weights of ``x`` as in :meth:`sample_and_log_weight`.
        """
        states: list[Tensor] = []
        with torch.no_grad():
            x = self._draw(torch.Size(sample_shape), states)
            return states, self.log_weight(x)

    def importance_weights(self, num_samples: int) -> tuple[Tensor, ImportanceWeights]:
        """``num_samples`` draws and their :class:`~pyro_snf.weights.ImportanceWeights`."""
        if self.batch_shape:
            raise ValueError("importance_weights needs an unbatched flow (batch_shape == ())")
        x, log_w = self.sample_and_log_weight((num_samples,))
        return x, ImportanceWeights(log_w)

    def backward_path(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run the chain backward from target samples ``x``.

        Returns ``(z, nll_bound)`` with ``nll_bound = -log q_0(z) + sum_t dS_t``, whose expectation
        is an upper bound on ``-log q_X(x)`` (exact for bijection-only flows): the forward-KL /
        maximum-likelihood loss of an SNF.
        """
        potential = self._target if self.potential is not None else _no_potential
        infos: list[BlockInfo] = []
        z, sum_dS = backward_path(self.layers, x, potential, self.base_potential, infos)
        self._token.infos = infos
        return z, -self.base_dist.log_prob(z) + sum_dS

    # -- Pyro plumbing ---------------------------------------------------------------------------
    def expand(self, batch_shape, _instance=None) -> StochasticNormalizingFlow:
        batch_shape = torch.Size(batch_shape)
        return StochasticNormalizingFlow(
            self.base_dist.expand(batch_shape), self.layers, self.potential, _token=self._token
        )

    def __repr__(self) -> str:
        names = ", ".join(type(layer).__name__ for layer in self.layers)
        return f"StochasticNormalizingFlow(base={self.base_dist!r}, layers=[{names}])"


def _check_sample_shape(sample_shape: torch.Size, batch_shape: torch.Size) -> None:
    """Refuse draws of no samples: layers (Pyro's coupling nets among them) cannot run on an empty
    batch, and zero weights have no log Z, ESS or resample (``ImportanceWeights`` refuses them)."""
    shape = tuple(sample_shape) + tuple(batch_shape)
    if any(int(n) <= 0 for n in shape):
        raise ValueError(
            f"sample_shape {tuple(sample_shape)} (flow batch_shape {tuple(batch_shape)}) has a dimension "
            "< 1: an SNF draws at least one sample (log Z, ESS and resampling need many). Check the "
            "number of samples you computed"
        )


def _no_potential(y: Tensor) -> Tensor:
    raise ValueError("this flow has no potential, so its stochastic blocks cannot run")
