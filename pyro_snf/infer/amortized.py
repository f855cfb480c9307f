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

Gradients: noise is reparameterised, accept masks are constants, forces are differentiated, so the
encoder, the decoder (``pyro.module`` inside the model) and learnable block parameters all get the
path ELBO's gradient. ``block_kwargs={"detach_forces": True}`` treats forces as constants: weights
stay exact, the gradient drops the terms through the forces (biased, cheaper). Adapted step sizes
(the default for Metropolis-adjusted blocks) are constants for autograd and move only inside
:meth:`AmortizedSNF.adapting`, toward the blocks' target acceptance averaged over all points.

Requirements: every sample site of the model inside the data plate (global latents raise a
``NotImplementedError``: make them parameters, or use another guide for them), one continuous local
latent site, a decoder that treats data points independently (no batch norm in training mode). With a
subsampled plate the encoder may return rows for the call's ``B`` points or for all ``N`` points (the
guide takes the subsample's rows).

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
from pyro_snf.infer.amortized_parts import LocalLayout, LocalLogJoint, local_layout
from pyro_snf.infer.autoguide import DEFAULT_BLOCK_KWARGS
from pyro_snf.infer.guide_parts import register_with_param_store
from pyro_snf.infer.potential import _FiniteGrad
from pyro_snf.path import forward_path
from pyro_snf.weights import sanitize_log_weights

Energy = Callable[[Tensor], Tensor]


class AmortizedSNF(nn.Module):
    """Amortized SNF guide for a local-latent model (see the module docstring for the math).

    :param model: the Pyro model; every sample site inside ``plate``, one continuous latent ``site``.
    :param encoder: a callable ``(*args, **kwargs) -> (loc, scale)`` of the model's arguments, each of
        shape ``(B, D)`` (``scale > 0``); an ``nn.Module`` is registered (``pyro.module``) with the guide.
    :param site: the name of the local latent site.
    :param plate: the name of the data plate (may subsample).
    :param num_blocks: number of stochastic blocks (0: the plain Gaussian encoder).
    :param block: a key of :data:`pyro_snf.blocks.BLOCKS`, a block class or a factory ``beta -> block``.
    :param block_kwargs: constructor arguments of every block, on top of ``step_size=0.5, num_steps=2``
        (whitened units); e.g. ``detach_forces``, ``target_accept``, ``learn_step_size``.
    :param betas: annealing schedule (default: :func:`pyro_snf.architectures.default_betas`).
    :param blocks: ready-made blocks (instead of ``block``, ``num_blocks``, ``block_kwargs``, ``betas``).
    :param name: prefix in Pyro's param store and of the auxiliary site ``_<name>_base``.
    """

    def __init__(self, model: Callable, encoder: Callable[..., tuple[Tensor, Tensor]], site: str = "z",
                 plate: str = "data", num_blocks: int = 2, block: str | type[StochasticBlock] | BlockFactory
                 = "mala", *, block_kwargs: dict | None = None, betas: Sequence[float] | None = None,
                 blocks: Sequence[StochasticBlock] | None = None, name: str = "amortized_snf") -> None:
        super().__init__()
        if not callable(encoder):
            raise TypeError(f"encoder must be a callable (*args, **kwargs) -> (loc, scale), got {encoder!r}")
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

    @property
    def model(self) -> Callable:
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

    def _register(self) -> None:
        register_with_param_store(self.name, self, list(self.blocks))

    def encode(self, layout: LocalLayout, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """The encoder's ``(loc, scale)`` for the call's data points, checked: shape ``(B, D)``; rows for
        all ``N`` points of a subsampled plate are reduced to the subsample's."""
        out = self.encoder(*args, **kwargs)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(torch.is_tensor(t) for t in out)):
            raise TypeError(f"encoder must return a pair of tensors (loc, scale), got {type(out).__name__}")
        loc, scale = out
        b, n, d = layout.size, layout.full_size, layout.latent_dim
        if n != b and loc.shape == (n, d) and scale.shape == (n, d):
            idx = layout.indices.to(loc.device)
            loc, scale = loc[idx], scale[idx]
        if loc.shape != (b, d) or scale.shape != (b, d):
            raise ValueError(
                f"encoder returned loc of shape {tuple(loc.shape)} and scale of shape {tuple(scale.shape)}; "
                f"expected (B, D) = ({b}, {d}) each: B = {b} data points of plate {self.plate!r} in this call"
                + (f" (or ({n}, {d}) for all {n} points, of which the guide takes the subsample)" if n != b
                   else "") + f", D = {d} unconstrained coordinates of site {self.site!r}")
        return loc, scale

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
        loc, scale = self.encode(lay, *args, **kwargs)
        log_joint, target, base, log_scale = self._energies(lay, args, kwargs, loc, scale)
        b, d, pad = lay.size, lay.latent_dim, (1,) * (-lay.dim - 1)
        plate = pyro.plate(lay.plate, lay.full_size, subsample=lay.indices, dim=lay.dim)
        with plate:
            std = dist.Normal(loc.new_zeros((b,) + pad + (d,)), 1.0).to_event(1)
            w0 = pyro.sample(f"_{self.name}_base", std, infer={"is_auxiliary": True})
        lead = w0.shape[:w0.dim() - 2 - len(pad)]
        w, sum_dS = forward_path(list(self.blocks), w0.reshape(-1, b, d), target, base)
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
        loc, scale = self.encode(lay, *args, **kwargs)
        _, target, base, _ = self._energies(lay, args, kwargs, loc, scale)
        chunk = int(chunk_size) if chunk_size else max(1, 2 ** 15 // lay.size)
        out = []
        with ExitStack() as stack:
            for blk in self.blocks:  # no adaptation while estimating
                stack.enter_context(_not_adapting(blk))
            for start in range(0, int(num_samples), chunk):
                m = min(chunk, int(num_samples) - start)
                w0 = torch.randn((m, lay.size, lay.latent_dim), dtype=loc.dtype, device=loc.device)
                w, sum_dS = forward_path(list(self.blocks), w0, target, base)
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

    # -- saving ------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; the loaded values reach Pyro's param store too (the guide's
        parameters are registered first, then overwritten in place)."""
        self._register()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


@contextmanager
def _not_adapting(block: StochasticBlock) -> Iterator[None]:
    previous, block._adapt_now = block._adapt_now, False
    try:
        yield
    finally:
        block._adapt_now = previous
