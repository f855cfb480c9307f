"""``AmortizedSNF``: a stochastic normalizing flow as the amortized guide of a local-latent Pyro model
(a VAE's encoder, or any model with one latent vector ``z_i`` per data point ``x_i``).

The encoder maps the model's arguments to ``(loc, scale)``, each of shape ``(B, D)`` for the ``B`` data
points of the call. Each data point gets its own SNF in whitened coordinates ``w``,
``z_i = T(loc_i + scale_i * w)`` (``T = biject_to(support)``, the identity for real latents): a base draw
``w_0 ~ N(0, I_D)``, then the stochastic blocks (MALA by default), block ``k`` targeting the annealed
energy ``(1 - beta_k) u_0 + beta_k u_i`` with ``u_0(w) = |w|^2 / 2 + (D / 2) log(2 pi)`` and the data
point's own target

.. math::

    u_i(w) = -\\log p\\big(x_i, T(\\mathrm{loc}_i + \\mathrm{scale}_i \\odot w)\\big)
             - \\log|\\det J_T| - \\textstyle\\sum_d \\log \\mathrm{scale}_{id},
    \\qquad \\int e^{-u_i(w)}\\, dw = p(x_i).

The encoder's scale preconditions the blocks (step sizes are in units of the encoder's posterior
width), and ``u_i`` is the UNSCALED log joint of point ``i`` even when the data plate subsamples:
:class:`~pyro_snf.infer.amortized_parts.LocalLogJoint` evaluates it for all particles and all data
points in one batched model call. With ``sum dS`` the blocks' path terms, point ``i``'s sample has

.. math::

    \\log q(z_i) = \\log \\mathcal N(w_0; 0, I) - \\textstyle\\sum_t \\Delta S_t
                   - \\textstyle\\sum_d \\log \\mathrm{scale}_{id} - \\log|\\det J_T|, \\qquad
    \\log w_i = \\log p(x_i, z_i) - \\log q(z_i) = -u_i(w_T) + u_0(w_0) + \\textstyle\\sum_t \\Delta S_t,

and ``E[w_i] = p(x_i)`` exactly, for any encoder, decoder and step sizes: the chains of different data
points share parameters (step sizes) but never noise, accept decisions or energies, so each point's
weight is that of its own SNF.
``E[log w_i]`` is the path ELBO (:class:`~pyro.infer.Trace_ELBO`); with ``K`` particles,
:class:`~pyro.infer.RenyiELBO` ``(alpha=0)`` maximises ``sum_i E[log (1/K) sum_k w_ik]``, the
per-datapoint IWAE bound (Pyro keeps the plate that every site shares); :meth:`AmortizedSNF.log_likelihood`
estimates each ``log p(x_i)`` from ``K`` weights with its standard error.

Pyro sites, both inside the data plate (its subsample and ``N / B`` scale included): an auxiliary base
site ``_<name>_base`` (``w_0``, density ``N(0, I)``) and ``site`` itself, a ``Delta`` at ``z_i`` whose
log-density is the rest of the path density, ``-sum dS - sum log scale - log|det J_T|``. The path runs
between the two, outside the plate (the blocks call the model, which opens that plate itself).
``TraceMeanField_ELBO`` is NOT supported (its analytic KL ignores a Delta's log-density).

Flows (``num_flows=k``): ``k`` conditional affine couplings (``flow="coupling"``) or conditional IAFs
(``"iaf"``) on ``w`` before each block, given a per-point context ``h_i``: the encoder's third output
(``encoder(...) -> (loc, scale, context)``, ``context_dim=H``) or ``(loc_i, log scale_i)``
(:mod:`~pyro_snf.infer.amortized_flows`). Their exact log-determinants are path terms in ``sum dS``, so
the weights above stay exact; blocks after a flow target the same annealed energies of ``w``.

Gradients: noise is reparameterised, accept masks are constants, forces are differentiated, so the
encoder, the decoder, the flows and learnable block parameters all get the path ELBO's gradient;
``block_kwargs={"detach_forces": True}``: forces as constants (exact weights, biased cheaper gradient).
Adapted step sizes (the default for Metropolis-adjusted blocks) are constants for autograd and move
only inside :meth:`AmortizedSNF.adapting`, toward the blocks' target acceptance averaged over all points.

Requirements: every sample site of the model inside the data plate, one continuous local latent site, a
decoder that treats data points independently (no batch norm in training mode). A global latent raises
a ``NotImplementedError`` that says what works: make it a parameter (``pyro.param``/``pyro.module``) fit
by SVI, as a VAE's decoder weights are. With a subsampled plate the encoder may return rows for the
call's ``B`` points or for all ``N`` (the guide takes the subsample's). Saving (param store,
``torch.save``, ``state_dict``), checked against the configuration: :mod:`~pyro_snf.infer.amortized_saving`.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro.infer import SVI, RenyiELBO
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    ...         pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1), obs=x)
    >>> class Encoder(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(1, 4)
    ...     def forward(self, x):
    ...         loc, log_scale = self.net(x).chunk(2, -1)
    ...         return loc, log_scale.exp()
    >>> guide = AmortizedSNF(model, Encoder(), site="z", plate="data", num_blocks=2, block="mala")
    >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), RenyiELBO(alpha=0, num_particles=3))
    >>> x = torch.randn(6, 1)
    >>> with guide.adapting():
    ...     losses = [svi.step(x) for _ in range(2)]
    >>> ll, se = guide.log_likelihood(x, num_samples=100)  # per-datapoint log p(x_i) and its SE
    >>> guide(x)["z"].shape, ll.shape, se.shape
    (torch.Size([6, 2]), torch.Size([6]), torch.Size([6]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_snf.architectures import annealed_blocks
from pyro_snf.blocks import BlockFactory, BlockInfo, StochasticBlock
from pyro_snf.distribution import base_energy
from pyro_snf.infer.amortized_flows import FLOW_KINDS, ConditionalFlows, check_encoder_output
from pyro_snf.infer.amortized_parts import LocalLayout, LocalLogJoint, local_layout, not_adapting
from pyro_snf.infer.amortized_saving import SavedAmortizedGuide, amortized_fingerprint
from pyro_snf.infer.autoguide import DEFAULT_BLOCK_KWARGS
from pyro_snf.infer.potential import _FiniteGrad
from pyro_snf.path import forward_path
from pyro_snf.weights import sanitize_log_weights

Energy = Callable[[Tensor], Tensor]


class AmortizedSNF(SavedAmortizedGuide, nn.Module):
    """Amortized SNF guide for a local-latent model (see the module docstring for the math).

    :param model: the Pyro model; every sample site inside ``plate``, one continuous latent ``site``.
    :param encoder: a callable ``(*args, **kwargs) -> (loc, scale)`` of the model's arguments, each of
        shape ``(B, D)`` (``scale > 0``), or ``-> (loc, scale, context)`` for the flows; an ``nn.Module``
        is registered (``pyro.module``) with the guide, so its parameters train.
    :param site: the name of the local latent site.
    :param plate: the name of the data plate (may subsample).
    :param num_blocks: number of stochastic blocks (0: the plain Gaussian encoder).
    :param block: a key of :data:`pyro_snf.blocks.BLOCKS`, a block class or a factory ``beta -> block``.
    :param block_kwargs: constructor arguments of every block, on top of ``step_size=0.5, num_steps=2``
        (whitened units); e.g. ``detach_forces``, ``target_accept``, ``learn_step_size``.
    :param betas: annealing schedule (default: :func:`pyro_snf.architectures.default_betas`).
    :param blocks: ready-made blocks (instead of ``block``, ``num_blocks``, ``block_kwargs``, ``betas``).
    :param num_flows: conditional flow layers before each block (0: none; one stage if no blocks),
        :class:`~pyro_snf.infer.amortized_flows.ConditionalFlows`; they need ``latent_dim``.
    :param flow: ``"coupling"`` (conditional affine couplings) or ``"iaf"`` (conditional IAF).
    :param latent_dim: ``D``, unconstrained coordinates per data point (for the flows; checked on calls).
    :param context_dim: ``H``, the size of the context the encoder returns as a third output
        ``(loc, scale, context)``; None: the flows condition on ``(loc, log scale)`` (``H = 2 D``).
    :param flow_hidden_dims: hidden sizes of the flow networks (Pyro's defaults if None).
    :param name: prefix in Pyro's param store and of the auxiliary site ``_<name>_base``.
    """

    def __init__(self, model: Callable, encoder: Callable[..., tuple[Tensor, ...]], site: str = "z",
                 plate: str = "data", num_blocks: int = 2, block: str | type[StochasticBlock] | BlockFactory
                 = "mala", *, block_kwargs: dict | None = None, betas: Sequence[float] | None = None,
                 blocks: Sequence[StochasticBlock] | None = None, num_flows: int = 0, flow: str = "coupling",
                 latent_dim: int | None = None, context_dim: int | None = None,
                 flow_hidden_dims: Sequence[int] | None = None, name: str = "amortized_snf") -> None:
        super().__init__()
        if not callable(encoder):
            raise TypeError(f"encoder must be a callable (*args, **kwargs) -> (loc, scale), got {encoder!r}")
        if flow not in FLOW_KINDS:
            raise ValueError(f"flow must be one of {list(FLOW_KINDS)}, got {flow!r}")
        if num_flows and latent_dim is None:
            raise ValueError(f"num_flows={num_flows} needs latent_dim=D (unconstrained coordinates per data "
                             "point) to build the flow networks")
        if context_dim is not None and not num_flows:
            raise ValueError(f"context_dim={context_dim} is the size of the encoder's context for the "
                             "conditional flows: pass num_flows >= 1 too, or drop context_dim")
        if blocks is None:
            block_kwargs = dict(block_kwargs or {})
            if isinstance(block, (str, type)):
                block_kwargs = {**DEFAULT_BLOCK_KWARGS, **block_kwargs}
            blocks = annealed_blocks(block, num_blocks, betas=betas, **block_kwargs)
        elif not all(isinstance(b, StochasticBlock) for b in blocks):
            raise TypeError("blocks must be pyro_snf StochasticBlock instances")
        self._model = (model,)  # a tuple: a model that is an nn.Module is not a submodule of the guide
        self.encoder = encoder
        self.blocks = nn.ModuleList(blocks)
        self.site, self.plate, self.name = site, plate, name
        self.latent_dim, self.context_dim = latent_dim, context_dim
        h = 2 * latent_dim if context_dim is None and latent_dim is not None else context_dim
        self.flows = ConditionalFlows(flow, latent_dim, h, max(len(blocks), 1), num_flows,
                                      flow_hidden_dims) if num_flows else None
        self.config = amortized_fingerprint(blocks, flow=flow, num_flows=num_flows, latent_dim=latent_dim,
                                            context_dim=context_dim, hidden_dims=flow_hidden_dims)

    @property
    def model(self) -> Callable:
        if self._model[0] is None:
            raise RuntimeError("this AmortizedSNF was unpickled without its model (it did not pickle, e.g. a "
                               "local function); its blocks need it: call guide.set_model(model)")
        return self._model[0]

    @property
    def info(self) -> list[BlockInfo | None]:
        """Per-block statistics of each block's most recent call (acceptance, non-finite, dead)."""
        return [b.last_info for b in self.blocks]

    @contextmanager
    def adapting(self) -> Iterator[AmortizedSNF]:
        """Within this context every guide call moves the step size of each block built with
        ``adapt_step_size`` toward its target acceptance; outside it step sizes never change."""
        adaptive = [b for b in self.blocks if b.adapt_step_size]
        if not adaptive:
            raise ValueError("no block of this guide adapts its step size")
        with ExitStack() as stack:
            for blk in adaptive:
                stack.enter_context(blk.adapting())
            yield self

    # -- parts -------------------------------------------------------------------------------------
    def layout(self, *args: Any, **kwargs: Any) -> LocalLayout:
        """Trace the model once for these arguments: the plate's subsample, sizes and the latent's layout."""
        return local_layout(self.model, self.site, self.plate, args, kwargs)

    def encode(self, layout: LocalLayout, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        """The encoder's ``(loc, scale, context)`` for the call's data points, checked: shapes ``(B, D)``
        and ``(B, H)``; rows for all ``N`` points of a subsampled plate are reduced to the subsample's.
        ``context`` is the encoder's third output, else ``(loc, log scale)`` when the guide has flows,
        else None."""
        if self.latent_dim is not None and layout.latent_dim != self.latent_dim:
            raise ValueError(f"site {self.site!r} has {layout.latent_dim} unconstrained coordinates per data "
                             f"point, but the guide was built with latent_dim={self.latent_dim}")
        loc, scale, context = check_encoder_output(
            self.encoder(*args, **kwargs), layout.size, layout.full_size, layout.latent_dim, layout.indices,
            self.context_dim, self.plate, self.site)
        if self.flows is not None and context is None:
            context = torch.cat([loc, scale.log()], -1)
        return loc, scale, context

    def path_layers(self, context: Tensor | None) -> list:
        """The path's layers for these per-point contexts: flow stage ``k`` (if any), then block ``k``."""
        if self.flows is None:
            return list(self.blocks)
        out: list = []
        for k in range(max(len(self.blocks), 1)):
            out += self.flows.stage(k, context) + ([self.blocks[k]] if k < len(self.blocks) else [])
        return out

    def _energies(self, layout: LocalLayout, args: tuple, kwargs: dict, loc: Tensor,
                  scale: Tensor) -> tuple[LocalLogJoint, Energy, Energy, Tensor]:
        """The log joint, the per-point target ``u_i(w)``, the base energy ``u_0(w)`` and
        ``sum_d log scale_id`` (shape ``(B,)``)."""
        log_joint = LocalLogJoint(self.model, layout, args, kwargs)
        log_scale = scale.log().sum(-1)
        std = dist.Normal(torch.zeros_like(loc[0]), torch.ones_like(loc[0])).to_event(1)

        def target(w: Tensor) -> Tensor:
            w = _FiniteGrad.apply(w)
            u = -(log_joint(loc + scale * w) + log_scale)
            return torch.where(torch.isnan(u), torch.full_like(u, float("inf")), u)

        return log_joint, target, lambda w: base_energy(std, w), log_scale

    # -- the guide ---------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        lay = self.layout(*args, **kwargs)
        self._register()
        loc, scale, context = self.encode(lay, *args, **kwargs)
        log_joint, target, base, log_scale = self._energies(lay, args, kwargs, loc, scale)
        b, d, pad = lay.size, lay.latent_dim, (1,) * (-lay.dim - 1)
        plate = pyro.plate(lay.plate, lay.full_size, subsample=lay.indices, dim=lay.dim)
        with plate:
            std = dist.Normal(loc.new_zeros((b,) + pad + (d,)), 1.0).to_event(1)
            w0 = pyro.sample(f"_{self.name}_base", std, infer={"is_auxiliary": True})
        lead = w0.shape[:w0.dim() - 2 - len(pad)]
        w, sum_dS = forward_path(self.path_layers(context), w0.reshape(-1, b, d), target, base)
        z, ladj = log_joint.constrain(loc + scale * w)
        log_density = -(sum_dS + log_scale + ladj)
        with plate:
            fn = dist.Delta(z.reshape(lead + z.shape[1:]), log_density.reshape(lead + (b,) + pad),
                            event_dim=lay.event_dim)
            return {self.site: pyro.sample(self.site, fn)}

    # -- importance sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def log_weights(self, *args: Any, num_samples: int = 1000, chunk_size: int | None = None,
                    **kwargs: Any) -> Tensor:
        """Importance log-weights ``log w_ik = log p(x_i, z_ik) - log q(z_ik)``, shape ``(K, B)`` for
        ``K = num_samples`` paths per data point (``E[w_ik] = p(x_i)``); ``chunk_size`` paths per model
        call (default: about ``2**15 / B``). Zero weights (non-finite densities) are ``-inf``, with a
        warning. Step sizes never adapt here, even inside :meth:`adapting`."""
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples}")
        lay = self.layout(*args, **kwargs)
        self._register()
        loc, scale, context = self.encode(lay, *args, **kwargs)
        _, target, base, _ = self._energies(lay, args, kwargs, loc, scale)
        layers = self.path_layers(context)
        chunk = int(chunk_size) if chunk_size else max(1, 2 ** 15 // lay.size)
        out = []
        with ExitStack() as stack:
            for blk in self.blocks:  # no adaptation while estimating
                stack.enter_context(not_adapting(blk))
            for start in range(0, int(num_samples), chunk):
                m = min(chunk, int(num_samples) - start)
                w0 = torch.randn((m, lay.size, lay.latent_dim), dtype=loc.dtype, device=loc.device)
                w, sum_dS = forward_path(layers, w0, target, base)
                out.append(-target(w) + base(w0) + sum_dS)
        return sanitize_log_weights(torch.cat(out), what="paths", stacklevel=3)

    def log_likelihood(self, *args: Any, num_samples: int = 1000, chunk_size: int | None = None,
                       **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Per-datapoint importance estimates of ``log p(x_i)`` and their delta-method standard errors,
        each of shape ``(B,)``: ``log (1/K) sum_k w_ik`` and ``sqrt(var_k(w_ik) / (K mean_k(w_ik)^2))``
        (:meth:`log_weights`). Unbiased in ``p(x_i)``; the SE is optimistic for heavy-tailed weights."""
        log_w = self.log_weights(*args, num_samples=num_samples, chunk_size=chunk_size, **kwargs)
        k = log_w.shape[0]
        ll = torch.logsumexp(log_w, 0) - math.log(k)
        w = (log_w - log_w.max(0).values).exp()
        mean = w.mean(0)
        var = w.var(0) if k > 1 else torch.full_like(mean, float("inf"))
        se = torch.where(mean > 0, (var / (k * mean * mean)).sqrt(), torch.full_like(mean, float("inf")))
        return ll, se

