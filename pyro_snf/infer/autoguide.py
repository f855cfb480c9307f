"""``AutoSNF``: a Pyro autoguide that is a stochastic normalizing flow (SNF).

Sampling: ``w_0 ~ N(0, I_D)``, optional flow layers (e.g. identity-initialised affine couplings +
fixed permutations) interleaved with stochastic blocks (MALA by default), then the learnable
affine map ``A(w) = loc + L w`` (``L`` lower-triangular as in AutoMultivariateNormal, or diagonal;
``loc`` from ``init_loc_fn``, ``L = init_scale * I``) gives the unconstrained latent ``x``
(AutoContinuous's layout); ``theta = T(x)`` constrains it. Block ``k`` acts on whitened
coordinates ``w`` and targets ``(1 - beta_k) |w|^2 / 2 + beta_k u(A(F(w)))``, ``F`` being the flow
layers after it and ``u`` the model's own unconstrained potential
(:class:`~pyro_snf.infer.potential.ModelPotential`, one batched model call for all particles per
energy), so ``L`` preconditions the blocks. With ``sum dS`` the path terms (bijection log-dets,
``log|det A|`` included, and block ``dS``) the guide's path density is

.. math::

    \\log q(\\theta) = \\log \\mathcal N(w_0; 0, I) - \\textstyle\\sum_t \\Delta S_t - \\log|\\det J_T(x)|,

so ``log p(data, theta) - log q(theta)`` is an exact importance log-weight (``E[w] = p(data)`` for
any parameters) and its mean the path ELBO. Pyro sites (design C of DESIGN.md): auxiliary
``_AutoSNF_base`` (``w_0``), factor ``_AutoSNF_path = -sum dS - log|det J_T|`` (reparameterised),
one ``Delta`` per latent with log-density 0. With every density term in the factor, all ELBOs are
exact, ``TraceMeanField_ELBO`` included (its ``KL(Delta, p)`` ignores a Delta's ``log_density``).

Choice of flow: on near-Gaussian posteriors ``flow="none"`` (the default: affine base + blocks)
trains fastest (1000 steps: ELBO within 0.02 nats of log Z on 3-7 dim conjugate models, coupling
flows 0.2-0.3 nats; 800 steps on eight schools / german credit, two seeds each: ESS 54-55% / 26-35%
against 7-55% / 6-7% with couplings); on funnels the couplings help (centred eight schools: ELBO
-32.7 against -34.4).

Step sizes: by default each Metropolis-adjusted block adapts its step size toward its target
acceptance during SVI steps (``adapt_step_size``); learned step sizes (``learn_step_size=True``)
can stall where the blocks do nothing (a tiny step accepting everything, or a huge one accepting
nothing). Stage-wise training is cheapest: fit the affine base (and flow) with the blocks off,
then switch them on for a few dozen steps (:meth:`AutoSNF.without_blocks`); the blocks then anneal
from the fitted Gaussian to the posterior and raise the ESS (benchmarks: german credit 8 blocks,
ESS ~0.6 against ~0.1-0.6 for the Gaussian alone).

Non-finite model densities: proposals there are rejected; a particle starting there is frozen with
factor ``+inf`` (zero weight, never NaN); returned values are never NaN. The ELBO of such a particle
is the model's ``-inf``/NaN, as with any guide.

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
    >>> losses = [svi.step(y) for _ in range(3)]
    >>> x, log_w = guide.get_posterior(y).sample_and_log_weight((5,))  # unconstrained x, weights
    >>> sorted(guide(y)), x.shape, log_w.shape
    (['mu'], torch.Size([5, 1]), torch.Size([5]))
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.torch_transform import TransformModule
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.params.param_store import param_with_module_name
from pyro.poutine.runtime import am_i_wrapped
from torch import Tensor, nn
from torch.distributions import Transform, biject_to, constraints

from pyro_snf import blocks as B
from pyro_snf.distribution import StochasticNormalizingFlow, base_energy
from pyro_snf.energy import Potential
from pyro_snf.infer import potential as P
from pyro_snf.path import forward_path

BLOCKS: dict[str, type[B.StochasticBlock]] = {
    "mala": B.MALABlock, "langevin": B.LangevinBlock, "metropolis": B.MetropolisBlock,
    "rwm": B.MetropolisBlock, "hmc": B.HMCBlock, "underdamped": B.UnderdampedLangevinBlock,
}
FLOWS = ("coupling", "iaf", "affine", "none")


class Affine(TransformModule):
    """``y = loc + L x``, ``L = diag(exp(log_scale)) + strictly_lower(tril)`` (``full=True``) or
    ``diag(exp(log_scale))``; learnable, ``log|det L| = sum(log_scale)``."""

    domain = codomain = constraints.real_vector
    bijective = True
    sign = 1

    def __init__(self, loc: Tensor, scale: float = 1.0, full: bool = False) -> None:
        super().__init__(cache_size=0)
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(torch.full_like(self.loc, math.log(scale)))
        dim = loc.shape[-1]
        self.tril = nn.Parameter(loc.new_zeros(dim, dim)) if full and dim > 1 else None

    def scale_tril(self) -> Tensor:
        diag = torch.diag_embed(self.log_scale.exp())
        return diag if self.tril is None else diag + self.tril.tril(-1)

    def _call(self, x: Tensor) -> Tensor:
        y = self.log_scale.exp() * x
        return self.loc + (y if self.tril is None else y + x @ self.tril.tril(-1).T)

    def _inverse(self, y: Tensor) -> Tensor:
        lower = self.scale_tril().expand(y.shape[:-1] + self.scale_tril().shape)
        return torch.linalg.solve_triangular(lower, (y - self.loc).unsqueeze(-1), upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.log_scale.sum().expand(x.shape[:-1])


class PulledBackBlock(B.StochasticBlock):
    """Runs ``block`` on the energy pulled back through the bijections that follow it.

    With ``transforms = (f_1, ..., f_m)`` (the later flow layers, ending with the guide's affine
    ``A``) the block targets ``u(f_m(...f_1(w)))``: the posterior in the block's own coordinates.
    Any target keeps the path weights exact; this one keeps every block consistent with the final
    map. The transforms are held in a tuple (registered elsewhere). ``step_size``, ``beta``,
    ``last_info``: the wrapped block's.
    """

    def __init__(self, block: B.StochasticBlock, transforms: Sequence[Transform]) -> None:
        super().__init__()
        self.block, self._transforms = block, tuple(transforms)

    def pull_back(self, potential: Potential) -> Potential:
        def pulled(w: Tensor) -> Tensor:
            for transform in self._transforms:
                w = transform(w)
            return potential(w)

        return pulled

    def forward_step(self, x: Tensor, potential: Potential, base_potential: Potential | None = None
                     ) -> tuple[Tensor, Tensor]:
        y, dS = self.block.forward_step(x, self.pull_back(potential), base_potential)
        self.last_info = self.block.last_info
        return y, dS

    step_size = property(lambda self: self.block.step_size)  # type: ignore[assignment]
    beta = property(lambda self: self.block.beta)  # type: ignore[assignment]

    def extra_repr(self) -> str:
        return ""


def _zero_last(net: nn.Module) -> None:
    """Zero the output layer of a Pyro DenseNN / AutoRegressiveNN: the flow starts as the identity."""
    nn.init.zeros_(net.layers[-1].weight), nn.init.zeros_(net.layers[-1].bias)


def make_flow(kind: str | Callable[[int], Any], dim: int, hidden_dims: Sequence[int] | None = None,
              stage: int = 0) -> list[Transform]:
    """Flow layers for one stage. ``coupling`` and ``iaf`` start at the identity and are followed by
    a fixed permutation (seeded by ``stage``, so a rebuilt guide matches its saved parameters); for
    ``dim == 1`` (no coupling or autoregression possible) they fall back to a diagonal :class:`Affine`."""
    if callable(kind):
        made = kind(dim)
        return list(made) if isinstance(made, (list, tuple)) else [made]
    hidden = None if hidden_dims is None else list(hidden_dims)
    if kind == "none":
        return []
    if kind == "affine" or (dim == 1 and kind in ("coupling", "iaf")):
        return [Affine(torch.zeros(dim))]
    if kind not in ("coupling", "iaf"):
        raise ValueError(f"flow must be one of {FLOWS} or a callable dim -> Transform(s), got {kind!r}")
    layer = (T.affine_coupling if kind == "coupling" else T.affine_autoregressive)(dim, hidden_dims=hidden)
    _zero_last(layer.nn if kind == "coupling" else layer.arn)
    perm = T.Permute(torch.randperm(dim, generator=torch.Generator().manual_seed(1000 + stage)))
    return [layer, perm]


class AutoSNF(AutoContinuous):
    """Stochastic-normalizing-flow autoguide (see the module docstring for the math).

    :param model: a Pyro model with continuous latents (any constrained supports), full-batch plates.
    :param init_loc_fn: per-site initialisation of ``loc`` (Pyro's ``init_to_*``).
    :param init_scale: initial ``scale`` of the affine base (unconstrained units).
    :param base: the affine map ``A``: ``"full"`` (lower-triangular ``L``, like AutoMultivariateNormal:
        Gaussian posteriors are exact and blocks get a dense preconditioner) or ``"diagonal"``
        (``D`` instead of ``D^2`` parameters, for large ``D``).
    :param flow: flow layers before each block: ``"none"`` (default: the affine base alone),
        ``"coupling"`` (affine coupling + permutation), ``"iaf"``, ``"affine"`` (elementwise) or a
        callable ``dim -> Transform(s)`` (e.g. ``pyro.distributions.transforms.spline_coupling``).
    :param hidden_dims: hidden sizes of the flow networks (Pyro's default if None).
    :param block: block type (a key of ``BLOCKS`` or a StochasticBlock subclass).
    :param num_blocks: number of blocks (0 gives a plain flow guide with one flow stage).
    :param num_steps: MCMC / dynamics steps per block.
    :param step_size: (initial) step size per block in whitened units (a float or one per block).
        The default 0.5 suits blocks that see a fitted Gaussian part (the target is then close to
        ``N(0, I)`` in whitened units; MALA's optimal step there is about ``0.4-0.7`` for
        ``D = 10-60``); adaptation corrects it either way.
    :param betas: annealing schedule. Default ``linspace(0, 1, num_blocks + 1)[1:]`` (ends at 1)
        for unadjusted blocks, ``linspace(0, 1, num_blocks + 2)[1:-1]`` for Metropolis-adjusted ones
        (mala, metropolis, hmc): such a block at ``beta = 1`` right before ``A`` has
        ``dS = u(y) - u(x)``, so it leaves every weight and the ELBO unchanged (no gradient either).
    :param learn_step_size, learn_beta, detach_forces: passed to the blocks.
    :param adapt_step_size: adapt each block's step size toward ``target_accept`` during SVI steps
        (see :class:`~pyro_snf.blocks.base.StochasticBlock`). Default (None): on for blocks with a
        Metropolis test (mala, metropolis, hmc) unless ``learn_step_size``; off otherwise.
    :param target_accept, adapt_rate: adaptation settings passed to the blocks (None: the block's
        default target, 0.574 for MALA; rate 0.1 per SVI step).
    :param block_kwargs: extra keyword arguments of the block class (e.g. ``num_leapfrog_steps``).
    :param blocks: ready-made blocks (overrides ``block``, ``num_blocks``, ``step_size``, ``betas``...).
    :param num_quantile_samples: guide samples behind :meth:`median` and :meth:`quantiles`.
    """

    def __init__(
        self, model: Callable, *, init_loc_fn: Callable = init_to_median, init_scale: float = 0.1,
        base: str = "full", flow: str | Callable[[int], Any] = "none",
        hidden_dims: Sequence[int] | None = None,
        block: str | type[B.StochasticBlock] = "mala", num_blocks: int = 2, num_steps: int = 2,
        step_size: float | Sequence[float] = 0.5, betas: Sequence[float] | None = None,
        learn_step_size: bool = False, learn_beta: bool = False, detach_forces: bool = False,
        adapt_step_size: bool | None = None, target_accept: float | None = None, adapt_rate: float = 0.1,
        block_kwargs: dict | None = None, blocks: Sequence[B.StochasticBlock] | None = None,
        num_quantile_samples: int = 1000,
    ) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if base not in ("full", "diagonal"):
            raise ValueError(f"base must be 'full' or 'diagonal', got {base!r}")
        if not callable(flow) and flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS} or a callable dim -> Transform(s), got {flow!r}")
        if blocks is None:
            blocks = _make_blocks(block, num_blocks, num_steps, step_size, betas, block_kwargs or {},
                                  learn_step_size=learn_step_size, learn_beta=learn_beta,
                                  detach_forces=detach_forces, adapt_step_size=adapt_step_size,
                                  target_accept=target_accept, adapt_rate=adapt_rate)
        elif not all(isinstance(b, B.StochasticBlock) for b in blocks):
            raise TypeError("blocks must be pyro_snf StochasticBlock instances")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self._raw_model = (model,)  # a tuple: never registered as a submodule
        self._init_scale, self._base = float(init_scale), base
        self._flow, self._hidden_dims = flow, hidden_dims
        self._blocks = list(blocks)
        self.num_quantile_samples = int(num_quantile_samples)
        self._layers: list[Transform] = []
        self._blocks_on = True

    # -- setup ---------------------------------------------------------------------------------
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        full = P.trace_model(self._raw_model[0], args, kwargs)
        P.check_model_trace(full, who="AutoSNF")
        super()._setup_prototype(*args, **kwargs)
        self._sites = P.latent_sites(self.prototype_trace)
        self._max_plate_nesting = P.max_plate_nesting(full)
        loc = self._init_loc().detach()
        affine = Affine(loc, self._init_scale, full=self._base == "full")
        stages = [make_flow(self._flow, self.latent_dim, self._hidden_dims, stage=k)
                  for k in range(max(len(self._blocks), 1))]
        layers: list[Transform] = []
        for k, blk in enumerate(self._blocks):
            later = [t for stage in stages[k + 1:] for t in stage] + [affine]
            layers += stages[k] + [PulledBackBlock(blk, later)]
        layers += [] if self._blocks else stages[0]
        layers.append(affine)
        self.chain = nn.ModuleList([m for m in layers if isinstance(m, nn.Module)]).to(
            dtype=loc.dtype, device=loc.device)
        self._layers = layers

    def _chain(self) -> nn.ModuleList:
        """Register the layers' parameters with the param store (and load them from it)."""
        chain, prefix = self._modules["chain"], self._pyro_get_fullname("chain")
        store = pyro.get_param_store()
        for name, p in chain.named_parameters():
            full = param_with_module_name(prefix, name)
            if full in store and store[full].shape != p.shape:
                raise ValueError(
                    f"the param store holds '{full}' of shape {tuple(store[full].shape)}, but this guide's "
                    f"parameter has shape {tuple(p.shape)} (another guide of the same name, or a different "
                    "model?). Call pyro.clear_param_store() or give the guide its own name"
                )
        module = pyro.module(prefix, chain, update_module_params=True)
        for k, block in enumerate(self._blocks):
            if block.adapt_step_size:  # adapted step sizes travel with the param store (save / load),
                # stored directly, not through pyro.param: no trace site, so SVI's optimiser never sees them
                name = param_with_module_name(prefix, f"adapted_log_step_size.{k}")
                stored = store.setdefault(name, block.log_step_size)
                if stored is not block.log_step_size:
                    block.log_step_size = stored
        return module

    # -- parts -----------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Transform]:
        """All layers in sampling order, ending with the affine base map ``A``."""
        return list(self._layers)

    @property
    def blocks(self) -> list[B.StochasticBlock]:
        return list(self._blocks)

    @contextmanager
    def without_blocks(self) -> Iterator[AutoSNF]:
        """Within this context the guide (``forward``, :meth:`get_posterior`) skips its blocks: it is
        the flow-only guide (flow layers and ``A``), whose path weights and ELBO are exact too.

        Stage-wise training: fit the cheap flow part first, then switch the blocks on for a few
        steps (their step sizes adapt there) and sample::

            with guide.without_blocks():
                for _ in range(750):
                    svi.step(data)
            for _ in range(50):
                svi.step(data)
        """
        previous, self._blocks_on = self._blocks_on, False
        try:
            yield self
        finally:
            self._blocks_on = previous

    def adapt_step_sizes(self, *args: Any, num_steps: int = 50, num_particles: int = 64,
                         **kwargs: Any) -> list[float]:
        """Tune the blocks' step sizes without training: ``num_steps`` draws of ``num_particles``
        paths (no gradients), each followed by the adaptation rule of the blocks built with
        ``adapt_step_size`` (the default for Metropolis-adjusted blocks). Cheap next to SVI steps
        through the blocks; use it after fitting the flow part with :meth:`without_blocks`.
        Returns the step sizes.
        """
        adaptive = [b for b in self._blocks if b.adapt_step_size]
        if not adaptive:
            raise ValueError("no block of this guide adapts its step size (adapt_step_size=False, "
                             "learn_step_size=True, or blocks without a Metropolis test)")
        if not self._blocks_on:
            raise RuntimeError("adapt_step_sizes was called inside without_blocks(), where the blocks "
                               "do not run")
        for name, n in (("num_steps", num_steps), ("num_particles", num_particles)):
            if int(n) != n or n < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {n}")
        posterior = self.get_posterior(*args, **kwargs)
        with ExitStack() as stack, torch.no_grad():
            for block in adaptive:
                stack.enter_context(block.adapting())
            for _ in range(int(num_steps)):
                posterior.rsample((int(num_particles),))
        return [float(b.step_size.detach()) for b in self._blocks]

    def _active_layers(self) -> list[Transform]:
        if self._blocks_on:
            return self._layers
        return [t for t in self._layers if not isinstance(t, PulledBackBlock)]

    @property
    def info(self) -> list[B.BlockInfo | None]:
        """Per-block statistics of the last guide call (acceptance rate, non-finite, dead)."""
        return [b.last_info for b in self._blocks]

    def get_potential(self, *args: Any, **kwargs: Any) -> P.ModelPotential:
        """The model's unconstrained energy ``u(x)`` for these model arguments."""
        if self._raw_model is None:
            raise RuntimeError("this AutoSNF was unpickled without its model (it was not picklable, e.g. a "
                               "local function); its blocks need it: call guide.set_model(model)")
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return P.ModelPotential(self._raw_model[0], self._sites, args, kwargs, self._max_plate_nesting)

    def set_model(self, model: Callable) -> None:
        """Re-attach the model (after unpickling a guide whose model could not be pickled)."""
        self._raw_model = (model,)

    def __getstate__(self) -> dict:
        try:  # keep the model when it pickles (AutoGuide always drops it)
            model = self._raw_model if pickle.dumps(self._raw_model) else None
        except Exception:
            model = None
        return {**super().__getstate__(), "_raw_model": model}

    def get_base_dist(self) -> dist.TorchDistribution:
        loc = self._layers[-1].loc
        return dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> Transform:
        raise NotImplementedError("AutoSNF has stochastic layers, not one transform; use get_posterior()")

    def get_posterior(self, *args: Any, **kwargs: Any) -> StochasticNormalizingFlow:
        """The guide over unconstrained latents ``x`` as a :class:`StochasticNormalizingFlow`:
        ``sample_and_log_weight`` gives weights against ``exp(-u)``, whose mean is ``p(data)``."""
        potential = self.get_potential(*args, **kwargs)
        self._chain()
        return StochasticNormalizingFlow(self.get_base_dist(), self._active_layers(), potential)

    # -- the guide -------------------------------------------------------------------------------
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

    # -- summaries -------------------------------------------------------------------------------
    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Monte Carlo quantiles of the guide (``num_quantile_samples`` unweighted draws), taken per
        coordinate in the unconstrained space and then constrained, like AutoContinuous."""
        x = self.get_posterior(*args, **kwargs).rsample((self.num_quantile_samples,))
        q = torch.as_tensor(quantiles, dtype=x.dtype, device=x.device)
        latents = torch.quantile(x, q.reshape(-1), dim=0).reshape(q.shape + x.shape[-1:])
        result: dict[str, list[Tensor]] = {}
        for latent in latents.reshape(-1, x.shape[-1]):
            for site, value in self._unpack_latent(latent):
                result.setdefault(site["name"], []).append(biject_to(site["fn"].support)(value))
        return {k: torch.stack(v).reshape(q.shape + v[0].shape) for k, v in result.items()}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Monte Carlo median of the guide (see :meth:`quantiles`)."""
        return {k: v[0] for k, v in self.quantiles([0.5], *args, **kwargs).items()}


def _make_blocks(block: str | type[B.StochasticBlock], num_blocks: int, num_steps: int,
                 step_size: float | Sequence[float], betas: Sequence[float] | None, extra: dict,
                 **kwargs: Any) -> list[B.StochasticBlock]:
    cls = BLOCKS.get(block) if isinstance(block, str) else block
    if cls is None or not (isinstance(cls, type) and issubclass(cls, B.StochasticBlock)):
        raise ValueError(f"block must be one of {sorted(BLOCKS)} or a StochasticBlock subclass, "
                         f"got {block!r}")
    if int(num_blocks) != num_blocks or num_blocks < 0:
        raise ValueError(f"num_blocks must be an integer >= 0, got {num_blocks}")
    if betas is None:
        adjusted = issubclass(cls, (B.MALABlock, B.MetropolisBlock, B.HMCBlock))
        grid = torch.linspace(0, 1, num_blocks + 2 if adjusted else num_blocks + 1).tolist()
        betas = grid[1:-1] if adjusted else grid[1:]
    betas = [float(b) for b in betas]
    if kwargs.get("adapt_step_size") is None:
        kwargs["adapt_step_size"] = cls.default_target_accept is not None and not kwargs["learn_step_size"]
    steps = [float(step_size)] * num_blocks if isinstance(step_size, (int, float)) else list(step_size)
    if len(betas) != num_blocks or len(steps) != num_blocks:
        raise ValueError(f"betas and step_size need one entry per block ({num_blocks}), "
                         f"got {len(betas)} and {len(steps)}")
    return [cls(s, num_steps, b, **kwargs, **extra) for s, b in zip(steps, betas)]
