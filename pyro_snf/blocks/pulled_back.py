"""A block run on the energy pulled back through the bijections that follow it."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from pyro.distributions.torch_transform import TransformModule
from torch import Tensor
from torch.distributions import Transform

from pyro_snf.blocks.base import BlockStep, StochasticBlock
from pyro_snf.energy import Potential
from pyro_snf.transforms.jacobian import log_abs_det


class PulledBackBlock(StochasticBlock):
    """Runs ``block`` on the energy pulled back through the bijections that follow it.

    With ``transforms = (f_1, ..., f_m)`` (e.g. the later flow layers of
    :class:`~pyro_snf.infer.AutoSNF`, ending with its affine map ``A``) the block targets
    ``u(f_m(...f_1(w)))``; with ``jacobian=True``

    .. math:: u_w(w) = u(f(w)) - \\log\\lvert\\det \\partial f(w) / \\partial w\\rvert,
       \\quad f = f_m \\circ \\dots \\circ f_1,

    the target's density in the block's own coordinates: the density that ``f`` pushes forward to
    :math:`e^{-u}`. The two agree up to a constant when every ``f_i`` is affine; for nonlinear
    transforms (a flow's later stages) only the second is the target seen through them (MCMC in a
    flow's latent space, as NeuTra, Hoffman et al. 2019). Any target keeps the path weights exact;
    these keep every block consistent with the final map. The transforms are held in a tuple
    (registered elsewhere). ``metropolis_adjusted``, ``step_size``, ``beta``,
    ``adapt_step_size`` and :meth:`adapting` are the wrapped block's, which also adapts and keeps
    its own ``last_info``.

    Example::

        >>> import torch
        >>> from torch.distributions import AffineTransform
        >>> from pyro_snf.blocks import MALABlock
        >>> inner = MALABlock(0.1, 5)
        >>> block = PulledBackBlock(inner, [AffineTransform(1.0, 2.0)])
        >>> y, dS, info = block.step(torch.randn(100, 2), lambda x: 0.5 * (x ** 2).sum(-1))
        >>> block.metropolis_adjusted, float(block.step_size) == float(inner.step_size)
        (True, True)
    """

    def __init__(self, block: StochasticBlock, transforms: Sequence[Transform], *,
                 jacobian: bool = False) -> None:
        TransformModule.__init__(self, cache_size=0)  # no settings of its own: they are the block's
        self.block, self._transforms, self.jacobian = block, tuple(transforms), bool(jacobian)
        self.potential = self.base_potential = None
        self.last_info = None
        self._record = None

    def pull_back(self, potential: Potential) -> Potential:
        def pulled(w: Tensor) -> Tensor:
            log_det = None
            for transform in self._transforms:
                y = transform(w)
                if self.jacobian:
                    term = log_abs_det(transform, w, y)
                    log_det = term if log_det is None else log_det + term
                w = y
            return potential(w) if log_det is None else potential(w) - log_det

        return pulled

    def step(self, x: Tensor, potential: Potential, base_potential: Potential | None = None) -> BlockStep:
        result = self.block.step(x, self.pull_back(potential), base_potential)
        self.last_info = result.info
        return result

    def adapting(self) -> AbstractContextManager[StochasticBlock]:
        return self.block.adapting()

    metropolis_adjusted = property(lambda self: self.block.metropolis_adjusted)  # type: ignore[assignment]
    adapt_step_size = property(lambda self: self.block.adapt_step_size)
    num_steps = property(lambda self: self.block.num_steps)
    step_size = property(lambda self: self.block.step_size)  # type: ignore[assignment]
    beta = property(lambda self: self.block.beta)  # type: ignore[assignment]

    def step_size_like(self, x: Tensor) -> Tensor:
        return self.block.step_size_like(x)

    def extra_repr(self) -> str:
        return "jacobian=True" if self.jacobian else ""

