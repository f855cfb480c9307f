"""The stochastic block protocol shared by every MCMC/Langevin layer.

A stochastic block maps ``x`` to ``y`` by a random transition targeting the annealed energy
``u_beta = (1 - beta) u_0 + beta u`` and returns, with ``y``, the path term

.. math::

    \\Delta S = \\log \\hat q(y \\to x) - \\log q(x \\to y),

so that an SNF sample has importance log-weight ``-u(x_T) - log q_0(z) + sum_t dS_t``.
Every block here uses its own kernel as the backward kernel (``qhat = q``), which makes
``backward_step`` generic: running the block forward from ``y`` draws the backward move ``x`` and
the pair's term is minus the run's term (:func:`pyro_snf.path.backward_path` does the same).

Blocks are Pyro :class:`~pyro.distributions.torch_transform.TransformModule` objects with
``bijective = False``: they register with ``pyro.module`` and compose in a
``ComposeTransformModule``. The SNF engine calls :meth:`StochasticBlock.step` (value, path term
and the call's :class:`BlockInfo` together) and never relies on caches. Used as a plain transform
(``block(x)``), a block needs its potentials given at construction and keeps one identity-keyed
record ``(x, y, dS)`` of its last call: ``inv(y)`` and ``log_abs_det_jacobian(x, y)`` answer for
that pair only and raise a clear error for anything else. This is exactly what
:class:`torch.distributions.TransformedDistribution` needs to return the path log-density of its
own samples (use Pyro's bijections, which are cached by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_snf.blocks.kernels import BlockInfo, BlockStep
from pyro_snf.energy import AnnealedEnergy, Potential

__all__ = ["BlockInfo", "BlockStep", "StochasticBlock"]


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class StochasticBlock(TransformModule):
    """Base class: validation, learnable ``step_size``/``beta``, the transform record.

    :param step_size: proposal scale or integrator step (> 0).
    :param num_steps: number of MCMC/dynamics steps per call (>= 1).
    :param beta: annealing parameter in [0, 1]; the block targets ``(1-beta) u_0 + beta u``.
    :param learn_step_size: make ``step_size`` a parameter (stored as its log).
    :param learn_beta: make ``beta`` a parameter (stored as a logit; initial values are clipped
        into ``[1e-3, 1 - 1e-3]`` so that the logit is finite).
    :param detach_forces: treat forces as constants in the backward pass (weights stay exact,
        the gradient drops the force terms and is biased; see :mod:`pyro_snf.energy`).
    :param adapt_step_size: the step size is tuned by adaptation toward ``target_accept`` rather
        than learned (only for ``metropolis_adjusted`` blocks). Adaptation happens inside
        :meth:`adapting` only (``with block.adapting(): optimiser steps``, or forward passes under
        ``no_grad`` as a warmup): after every call there,
        ``log step_size += adapt_rate * (acceptance - target_accept)``; outside it no call changes
        the step. Each call runs with one fixed kernel, so every weight stays exact; it replaces
        gradient learning of the step (which can stall: a tiny step accepts everything and moves
        nothing), so it excludes ``learn_step_size``.
    :param target_accept: acceptance rate to adapt toward (default: the class's
        ``default_target_accept``: 0.234 random-walk Metropolis, 0.574 MALA, 0.651 HMC, the
        asymptotically optimal rates).
    :param adapt_rate: adaptation gain per call, in log step size (> 0).
    :param potential: target energy, only needed when the block is used as a plain transform.
    :param base_potential: base energy, likewise (only for ``beta != 1``).
    """

    bijective = False
    domain = constraints.real_vector
    codomain = constraints.real_vector
    sign = 1
    __repr__ = nn.Module.__repr__
    #: whether the kernel has a Metropolis accept test (only then can its step size be adapted).
    metropolis_adjusted: ClassVar[bool] = False
    #: acceptance rate that ``adapt_step_size`` aims for by default (None: not adaptable).
    default_target_accept: ClassVar[float | None] = None

    def __init__(
        self,
        step_size: float = 0.1,
        num_steps: int = 1,
        beta: float = 1.0,
        *,
        learn_step_size: bool = False,
        learn_beta: bool = False,
        detach_forces: bool = False,
        adapt_step_size: bool = False,
        target_accept: float | None = None,
        adapt_rate: float = 0.1,
        potential: Potential | None = None,
        base_potential: Potential | None = None,
    ) -> None:
        super().__init__(cache_size=0)
        step_size = _positive("step_size", step_size)
        if int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps}")
        beta = float(beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        self.num_steps = int(num_steps)
        self.adapt_step_size = bool(adapt_step_size)
        self.target_accept, self.adapt_rate = _adaptation(self, adapt_step_size, learn_step_size,
                                                          target_accept, adapt_rate)
        self.detach_forces = detach_forces
        self.potential = potential
        self.base_potential = base_potential
        log_step = torch.tensor(step_size).log()
        if learn_step_size:
            self.log_step_size = nn.Parameter(log_step)
        else:
            self.register_buffer("log_step_size", log_step)
        self._fixed_beta: float | None = None if learn_beta else beta
        clipped = min(max(beta, 1e-3), 1.0 - 1e-3)
        self.beta_logit = nn.Parameter(torch.tensor(clipped).logit()) if learn_beta else None
        #: statistics of this block's most recent call, for inspection only; nothing reads it while
        #: sampling (:meth:`step` returns them; flows collect them per draw).
        self.last_info: BlockInfo | None = None
        self._adapt_now = False
        self._record: tuple[Tensor, Tensor, Tensor] | None = None

    # -- parameters -------------------------------------------------------------------------
    def _log_step(self) -> Tensor:
        # an adapted step size is a constant for autograd (AutoSNF keeps it in Pyro's param store)
        return self.log_step_size.detach() if self.adapt_step_size else self.log_step_size

    def step_size_like(self, x: Tensor) -> Tensor:
        """The step size as a 0-d tensor on ``x``'s device and dtype."""
        return self._log_step().to(dtype=x.dtype, device=x.device).exp()

    @property
    def step_size(self) -> Tensor:
        return self._log_step().exp()

    @property
    def beta(self) -> float | Tensor:
        if self.beta_logit is None:
            return self._fixed_beta
        return torch.sigmoid(self.beta_logit)

    def energy(
        self, potential: Potential, base_potential: Potential | None, like: Tensor
    ) -> AnnealedEnergy:
        beta = self.beta
        if isinstance(beta, Tensor):
            beta = beta.to(dtype=like.dtype, device=like.device)
        return AnnealedEnergy(potential, base_potential, beta, self.detach_forces)

    @contextmanager
    def adapting(self) -> Iterator[StochasticBlock]:
        """Within this context, and only there, every call adapts the step size
        (``adapt_step_size`` must be set): around optimiser steps (``with block.adapting(): ...``)
        or, under ``torch.no_grad()``, as a cheap tuning phase of forward passes only, like an MCMC
        warmup (:meth:`pyro_snf.infer.AutoSNF.adapt_step_sizes` uses it)."""
        if not self.adapt_step_size:
            raise ValueError(f"{type(self).__name__} was built without adapt_step_size=True")
        previous, self._adapt_now = self._adapt_now, True
        try:
            yield self
        finally:
            self._adapt_now = previous

    # -- the engine interface ----------------------------------------------------------------
    def transition(self, x: Tensor, energy: AnnealedEnergy) -> BlockStep:
        """Run ``num_steps`` steps from ``x``; return ``(y, dS, info)``. Implemented by subclasses."""
        raise NotImplementedError

    def step(self, x: Tensor, potential: Potential, base_potential: Potential | None = None) -> BlockStep:
        """Draw ``y ~ q(x -> .)``; return ``BlockStep(y, dS, info)`` with
        ``dS = log qhat(y->x) - log q(x->y)`` and the call's statistics. Inside :meth:`adapting`
        the step size then adapts to the call's acceptance rate."""
        if x.dim() < 1:
            raise ValueError(f"{type(self).__name__} expects inputs of shape (..., D), got a scalar")
        y, dS, info = self.transition(x, self.energy(potential, base_potential, x))
        self.last_info = info
        if self._adapt_now:
            with torch.no_grad():  # in place on a buffer: no host sync, no graph
                rate = info.acceptance_rate.to(self.log_step_size.dtype)
                self.log_step_size.add_(self.adapt_rate * (rate - self.target_accept))
        return BlockStep(y, dS, info)

    def forward_step(
        self, x: Tensor, potential: Potential, base_potential: Potential | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``y ~ q(x -> .)``; return ``(y, dS)`` (:meth:`step` without the statistics)."""
        y, dS, _ = self.step(x, potential, base_potential)
        return y, dS

    def backward_step(
        self, y: Tensor, potential: Potential, base_potential: Potential | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``x ~ qhat(y -> .)``; return ``(x, dS)`` for the pair ``(x, y)``.

        The backward kernel is the block's own kernel, so this is a forward run from ``y`` whose
        path term changes sign.
        """
        x, dS_run = self.forward_step(y, potential, base_potential)
        return x, -dS_run

    # -- the Transform interface -------------------------------------------------------------
    def _bound_potential(self) -> Potential:
        if self.potential is None:
            raise ValueError(
                f"{type(self).__name__} used as a plain transform needs its energy: construct it with "
                "potential= (and base_potential= for beta < 1), or put it in a StochasticNormalizingFlow"
            )
        return self.potential

    def _call(self, x: Tensor) -> Tensor:
        rec = self._record
        if rec is not None and x is rec[0]:
            return rec[1]  # same input object: the recorded draw (torch's cache semantics)
        if rec is not None and x.shape == rec[0].shape and torch.equal(x, rec[0]):
            raise RuntimeError(
                f"{type(self).__name__} was called on a recomputed copy of its last input. A stochastic "
                "block cannot be re-run to recover its output (ComposeTransform.log_abs_det_jacobian does "
                "this when a bijection before it has cache_size=0). Use cached bijections "
                "(.with_cache(1)) or StochasticNormalizingFlow, which never re-runs layers."
            )
        y, dS = self.forward_step(x, self._bound_potential(), self.base_potential)
        self._record = (x, y, dS)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        rec = self._record
        if rec is not None and y is rec[1]:
            return rec[0]
        raise NotImplementedError(
            f"{type(self).__name__} is stochastic and has no inverse: inv(y) is only defined for the "
            "output of its last call. To score arbitrary points use a flow of bijections, or "
            "StochasticNormalizingFlow.backward_path for the backward-path bound."
        )

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        rec = self._record
        if rec is not None and x is rec[0] and y is rec[1]:
            return rec[2]
        raise NotImplementedError(
            f"{type(self).__name__}.log_abs_det_jacobian(x, y) is the path term of a pair it produced; "
            "this (x, y) is not its last (input, output) pair. Score samples right after drawing them."
        )

    def extra_repr(self) -> str:
        beta = self.beta
        beta = float(beta.detach()) if isinstance(beta, Tensor) else beta
        return f"step_size={float(self.step_size.detach()):.4g}, num_steps={self.num_steps}, beta={beta:.4g}"


def _adaptation(block: StochasticBlock, adapt: bool, learn: bool, target: float | None,
                rate: float) -> tuple[float | None, float]:
    """Validate the step-size adaptation settings; return ``(target_accept, adapt_rate)``."""
    name = type(block).__name__
    target = block.default_target_accept if target is None else float(target)
    if not adapt:
        return target, float(rate)
    if learn:
        raise ValueError(f"{name}: adapt_step_size and learn_step_size both set the step size; choose one "
                         "(adaptation toward target_accept is the robust default)")
    if not block.metropolis_adjusted:
        raise ValueError(f"{name} accepts every move (no Metropolis test), so its step size cannot be "
                         "adapted to an acceptance rate: set adapt_step_size=False, or learn_step_size=True")
    if target is None:
        raise ValueError(f"{name} has no default_target_accept: pass target_accept=")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target}")
    return target, _positive("adapt_rate", rate)

