"""``AutoSNF``: a Pyro autoguide that is a stochastic normalizing flow (SNF).

Sampling: ``w_0 ~ N(0, I_D)``, optional flow layers interleaved with stochastic blocks (MALA by
default), then the learnable affine map ``A(w) = loc + L w``
(:class:`~pyro_snf.transforms.Affine`: ``L`` lower-triangular as in AutoMultivariateNormal, or
diagonal; ``loc`` from ``init_loc_fn``, ``L = init_scale * I``) gives the unconstrained latent ``x``
(AutoContinuous's layout); ``theta = T(x)`` constrains it. Block ``k`` acts on whitened coordinates
``w`` and targets ``(1 - beta_k) |w|^2 / 2 + beta_k u(A(F(w)))`` (a
:class:`~pyro_snf.blocks.PulledBackBlock`), ``F`` being the flow layers after it and ``u`` the
model's unconstrained potential (:class:`~pyro_snf.infer.potential.ModelPotential`, one batched
model call per energy), so ``L`` preconditions the blocks. With ``sum dS`` the path terms
(bijection log-dets, ``log|det A|`` included, and block ``dS``):

.. math::

    \\log q(\\theta) = \\log \\mathcal N(w_0; 0, I) - \\textstyle\\sum_t \\Delta S_t - \\log|\\det J_T(x)|,

so ``log p(data, theta) - log q(theta)`` is an exact importance log-weight (``E[w] = p(data)`` for
any parameters) and its mean the path ELBO. Pyro sites: an auxiliary base site ``_AutoSNF_base``
(``w_0``, contributing ``log N(w_0; 0, I)``), a reparameterised factor
``_AutoSNF_path = -sum dS - log|det J_T|``, and one ``Delta`` per latent with log-density 0. With every
density term outside the Deltas, all ELBOs are exact, ``TraceMeanField_ELBO`` included (its
``KL(Delta, p)`` ignores a Delta's ``log_density``), and so are Pyro's importance tools.

Flow: ``"none"`` (default) trains fastest on near-Gaussian posteriors (eight schools / german credit,
800 steps: ESS 54-55% / 26-35% against 7-55% / 6-7% with couplings); couplings help on funnels.

Step sizes: Metropolis-adjusted blocks (mala, metropolis, hmc) are built with ``adapt_step_size``:
inside :meth:`AutoSNF.adapting` every guide call moves each step size toward its target acceptance;
outside it nothing changes the sampler. Stage-wise training is cheapest: fit the affine base (and
flow) with the blocks off (:meth:`AutoSNF.without_blocks`), then train a few dozen steps with the
blocks on inside :meth:`AutoSNF.adapting`; the blocks anneal from the fitted Gaussian to the posterior.

Non-finite model densities: proposals there are rejected; a particle starting there gets zero weight.

Saving (:class:`~pyro_snf.infer.guide_parts.SavedGuide`): ``pyro.get_param_store().save/load``,
``torch.save(guide)`` (the model too when it pickles, else :meth:`AutoSNF.set_model` after loading) and
``state_dict``; parameters from a differently configured guide raise a ``ValueError`` naming what differs.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro.infer import SVI, Trace_ELBO
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> guide = AutoSNF(model, num_blocks=1)
    >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(2, vectorize_particles=True))
    >>> y = torch.ones(4)
    >>> with guide.adapting():  # SVI steps that also adapt the blocks' step sizes
    ...     losses = [svi.step(y) for _ in range(3)]
    >>> x, log_w = guide.get_posterior(y).sample_and_log_weight((5,))  # unconstrained x, weights
    >>> sorted(guide(y)), x.shape, log_w.shape
    (['mu'], torch.Size([5, 1]), torch.Size([5]))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.runtime import am_i_wrapped
from torch import Tensor, nn
from torch.distributions import Transform, biject_to

from pyro_snf.architectures import annealed_blocks
from pyro_snf.blocks import BlockFactory, BlockInfo, PulledBackBlock, StochasticBlock
from pyro_snf.distribution import StochasticNormalizingFlow, base_energy
from pyro_snf.infer import potential as P
from pyro_snf.infer.guide_parts import MonteCarloQuantiles, SavedGuide, config_fingerprint
from pyro_snf.path import forward_path
from pyro_snf.transforms import FLOWS, Affine, make_flow

_OLD_BLOCK_KEYWORDS = ("num_steps", "step_size", "learn_step_size", "learn_beta", "detach_forces",
                       "adapt_step_size", "target_accept", "adapt_rate")
#: AutoSNF's defaults for named block classes (whitened units: the target is near N(0, I)).
DEFAULT_BLOCK_KWARGS = {"step_size": 0.5, "num_steps": 2}


class AutoSNF(MonteCarloQuantiles, SavedGuide, AutoContinuous):
    """Stochastic-normalizing-flow autoguide (see the module docstring for the math).

    :param model: a Pyro model with continuous latents (any constrained supports), full-batch plates.
    :param block: the stochastic block: a key of :data:`pyro_snf.blocks.BLOCKS` (default ``"mala"``),
        a block class, or a factory ``beta -> block``.
    :param num_blocks: number of blocks (0: a plain flow guide with one flow stage).
    :param block_kwargs: constructor arguments of every block, on top of :data:`DEFAULT_BLOCK_KWARGS`
        (``step_size=0.5`` in whitened units, ``num_steps=2``); e.g. ``num_leapfrog_steps``,
        ``detach_forces``, ``learn_beta``, ``target_accept``. ``adapt_step_size`` defaults to on for
        Metropolis-adjusted blocks unless ``learn_step_size=True``.
    :param betas: annealing schedule (default :func:`pyro_snf.architectures.default_betas`).
    :param blocks: ready-made blocks (instead of ``block``, ``num_blocks``, ``block_kwargs``, ``betas``).
    :param flow: flow layers before each block: a key of :data:`pyro_snf.transforms.FLOWS`
        (``"none"``, the default, ``"coupling"``, ``"iaf"``, ``"affine"``, ...) or a callable
        ``dim -> Transform(s)``.
    :param hidden_dims: hidden sizes of the flow networks (Pyro's default if None).
    :param base: the affine map ``A``: ``"full"`` (lower-triangular ``L``) or ``"diagonal"``.
    :param init_loc_fn: per-site initialisation of ``loc`` (Pyro's ``init_to_*``).
    :param init_scale: initial scale of ``A`` (unconstrained units).
    :param num_quantile_samples: guide samples behind :meth:`median` and :meth:`quantiles`.

    The block settings ``num_steps``, ``step_size``, ``learn_step_size``, ``learn_beta``,
    ``detach_forces``, ``adapt_step_size``, ``target_accept`` and ``adapt_rate`` are still accepted as
    keywords, with a ``DeprecationWarning``: pass them in ``block_kwargs``.
    """

    def __init__(
        self, model: Callable, *, block: str | type[StochasticBlock] | BlockFactory = "mala",
        num_blocks: int = 2, block_kwargs: dict | None = None, betas: Sequence[float] | None = None,
        blocks: Sequence[StochasticBlock] | None = None, flow: str | Callable[[int], Any] = "none",
        hidden_dims: Sequence[int] | None = None, base: str = "full", init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1, num_quantile_samples: int = 1000, **old_block_kwargs: Any,
    ) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if base not in ("full", "diagonal"):
            raise ValueError(f"base must be 'full' or 'diagonal', got {base!r}")
        if not callable(flow) and flow not in FLOWS:
            raise ValueError(f"flow must be one of {sorted(FLOWS)} or a callable dim -> Transform(s), "
                             f"got {flow!r}")
        block_kwargs = {**_old_keywords(old_block_kwargs), **(block_kwargs or {})}
        if blocks is None:
            if isinstance(block, (str, type)):
                block_kwargs = {**DEFAULT_BLOCK_KWARGS, **block_kwargs}
            blocks = annealed_blocks(block, num_blocks, betas=betas, **block_kwargs)
        elif not all(isinstance(b, StochasticBlock) for b in blocks):
            raise TypeError("blocks must be pyro_snf StochasticBlock instances")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self._raw_model = (model,)  # a tuple: never registered as a submodule
        self._init_scale, self._base = float(init_scale), base
        self._flow, self._hidden_dims = flow, hidden_dims
        self._blocks = list(blocks)
        self.num_quantile_samples = int(num_quantile_samples)
        self._layers: list[Transform] = []
        self._blocks_on = True

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        full = P.trace_model(self._raw_model[0], args, kwargs)
        P.check_model_trace(full, who="AutoSNF")
        super()._setup_prototype(*args, **kwargs)
        self._sites = P.latent_sites(self.prototype_trace)
        self._max_plate_nesting = P.max_plate_nesting(full)
        loc = self._init_loc().detach()
        affine = Affine(loc, self._init_scale, full=self._base == "full")
        stages = [make_flow(self._flow, self.latent_dim, hidden_dims=self._hidden_dims, stage=k)
                  for k in range(max(len(self._blocks), 1))]
        layers: list[Transform] = []
        for k, blk in enumerate(self._blocks):
            later = [t for stage in stages[k + 1:] for t in stage] + [affine]
            layers += stages[k] + [PulledBackBlock(blk, later)]
        layers += ([] if self._blocks else stages[0]) + [affine]
        self.chain = nn.ModuleList([m for m in layers if isinstance(m, nn.Module)]).to(
            dtype=loc.dtype, device=loc.device)
        self._layers = layers
        self._config = config_fingerprint(self._blocks, self.latent_dim, flow=self._flow,
                                          hidden_dims=self._hidden_dims, base=self._base)

    @property
    def layers(self) -> list[Transform]:
        """All layers in sampling order, ending with the affine base map ``A``."""
        return list(self._layers)

    @property
    def blocks(self) -> list[StochasticBlock]:  # the blocks as built (not wrapped)
        return list(self._blocks)

    @property
    def info(self) -> list[BlockInfo | None]:
        """Per-block statistics of each block's most recent call (acceptance, non-finite, dead)."""
        return [b.last_info for b in self._blocks]

    @contextmanager
    def without_blocks(self) -> Iterator[AutoSNF]:
        """Within this context the guide skips its blocks: it is the flow-only guide (flow layers and
        ``A``), whose path weights and ELBO are exact too (stage one of stage-wise training)."""
        previous, self._blocks_on = self._blocks_on, False
        try:
            yield self
        finally:
            self._blocks_on = previous

    @contextmanager
    def adapting(self) -> Iterator[AutoSNF]:
        """Within this context every guide call (an SVI step, a draw) moves the step size of each block
        built with ``adapt_step_size`` toward its target acceptance (see
        :meth:`pyro_snf.blocks.StochasticBlock.adapting`); outside it step sizes never change."""
        adaptive = [b for b in self._blocks if b.adapt_step_size]
        if not adaptive:
            raise ValueError("no block of this guide adapts its step size (adapt_step_size=False, "
                             "learn_step_size=True, or blocks without a Metropolis test)")
        with ExitStack() as stack:
            for blk in adaptive:
                stack.enter_context(blk.adapting())
            yield self

    def adapt_step_sizes(self, *args: Any, num_draws: int = 50, num_particles: int = 64,
                         **kwargs: Any) -> list[float]:
        """Tune the blocks' step sizes without training: ``num_draws`` draws of ``num_particles`` paths
        (no gradients) inside :meth:`adapting`; use it after fitting the flow part with
        :meth:`without_blocks`. Returns the step sizes."""
        if "num_steps" in kwargs:
            warnings.warn("adapt_step_sizes(num_steps=) is now num_draws=", DeprecationWarning, stacklevel=2)
            num_draws = kwargs.pop("num_steps")
        if not self._blocks_on:
            raise RuntimeError("adapt_step_sizes was called inside without_blocks(), where the blocks "
                               "do not run")
        for name, n in (("num_draws", num_draws), ("num_particles", num_particles)):
            if int(n) != n or n < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {n}")
        with self.adapting(), torch.no_grad():
            posterior = self.get_posterior(*args, **kwargs)
            for _ in range(int(num_draws)):
                posterior.rsample((int(num_particles),))
        return [float(b.step_size.detach()) for b in self._blocks]

    def get_potential(self, *args: Any, **kwargs: Any) -> P.ModelPotential:
        """The model's unconstrained energy ``u(x)`` for these model arguments."""
        if self._raw_model is None:
            raise RuntimeError("this AutoSNF was unpickled without its model (it was not picklable, e.g. a "
                               "local function); its blocks need it: call guide.set_model(model)")
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return P.ModelPotential(self._raw_model[0], self._sites, args, kwargs, self._max_plate_nesting)

    def get_base_dist(self) -> dist.TorchDistribution:
        loc = self._layers[-1].loc
        return dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> Transform:
        raise NotImplementedError("AutoSNF has stochastic layers, not one transform; use get_posterior()")

    def _active_layers(self) -> list[Transform]:
        on = self._blocks_on
        return [t for t in self._layers if on or not isinstance(t, PulledBackBlock)]

    def get_posterior(self, *args: Any, **kwargs: Any) -> StochasticNormalizingFlow:
        """The guide over unconstrained latents ``x`` as a :class:`StochasticNormalizingFlow`:
        ``sample_and_log_weight`` gives weights against ``exp(-u)``, whose mean is ``p(data)``."""
        potential = self.get_potential(*args, **kwargs)
        self._chain()
        return StochasticNormalizingFlow(self.get_base_dist(), self._active_layers(), potential)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        potential = self.get_potential(*args, **kwargs)
        self._chain()
        base = self.get_base_dist()
        w0 = pyro.sample(f"_{self._pyro_name}_base", base, infer={"is_auxiliary": True})
        x, sum_dS = forward_path(self._active_layers(), w0, potential, lambda w: base_energy(base, w))
        log_det = potential.log_abs_det_constrain(x)
        if am_i_wrapped():  # outside any handler nobody records it (and Pyro would warn)
            pyro.factor(f"_{self._pyro_name}_path", -(sum_dS + log_det), has_rsample=True)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for site, unconstrained_value in self._unpack_latent(x):
            name = site["name"]
            value = biject_to(site["fn"].support)(unconstrained_value)
            with ExitStack() as stack:
                for frame in self._cond_indep_stacks[name]:
                    stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, dist.Delta(value, event_dim=site["fn"].event_dim))
        return result


def _old_keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Block settings passed the old way (AutoSNF keywords): warn, and return them as block_kwargs."""
    unknown = sorted(set(kwargs) - set(_OLD_BLOCK_KEYWORDS))
    if unknown:
        raise TypeError(f"AutoSNF got unexpected keyword argument(s) {unknown}")
    if kwargs:
        warnings.warn(f"AutoSNF({', '.join(f'{k}=...' for k in kwargs)}): block settings now go in "
                      f"block_kwargs={{{', '.join(repr(k) + ': ...' for k in kwargs)}}}",
                      DeprecationWarning, stacklevel=3)
    if isinstance(kwargs.get("step_size"), (list, tuple)):
        raise ValueError("step_size takes one value for every block; for per-block step sizes pass "
                         "blocks=[...] (e.g. built with pyro_snf.architectures.annealed_blocks)")
    return dict(kwargs)
